"""The enums and constants Python mirrors from nfx.h, read straight from the header text."""
import re

import pytest

from nfx import layout as L
from nfx.paths import BPF_INCLUDE

HEADER = (BPF_INCLUDE / "nfx.h").read_text()


def c_enum(name: str) -> dict[str, int]:
    body = re.search(r"enum %s\s*\{(.*?)\};" % name, HEADER, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    out, nxt = {}, 0
    for item in filter(None, (x.strip() for x in body.split(","))):
        ident, _, val = item.partition("=")
        nxt = int(val.strip(), 0) if val else nxt
        out[ident.strip()] = nxt
        nxt += 1
    return out


def c_define(name: str) -> int:
    return int(re.search(r"#define %s\s+(\w+)" % name, HEADER).group(1).rstrip("u"), 0)


@pytest.mark.parametrize("cname,pyenum,prefix", [
    ("nfx_stat", L.Stat, "NFX_"), ("nfx_action", L.Action, "NFX_ACT_"),
    ("nfx_nat_timeout", L.NatTimeout, "NFX_TO_"), ("nfx_alert_kind", L.AlertKind, "NFX_ALERT_"),
    ("nfx_ids_global", L.IdsGlobal, "NFX_IDS_G_"),
    ("nfx_st_table", L.StTable, "NFX_ST_"), ("nfx_st_op", L.StOp, "NFX_ST_"),
    ("nfx_stf_nat", L.StfNat, "NFX_STF_NAT_"), ("nfx_stf_ids_flow", L.StfIdsFlow, "NFX_STF_FLOW_"),
    ("nfx_stf_ids_host", L.StfIdsHost, "NFX_STF_HOST_"),
])
def test_enums_match(cname, pyenum, prefix):
    c = {k[len(prefix):]: v for k, v in c_enum(cname).items() if not k.endswith("_MAX")}
    assert c == {m.name: m.value for m in pyenum}


@pytest.mark.parametrize("cname,value", [
    ("NFX_LAYOUT_VERSION", L.LAYOUT_VERSION), ("NFX_MAX_FILTERS", L.MAX_FILTERS),
    ("NFX_FILTER_USED", L.FILTER_USED), ("NFX_FILTER_BIDIR", L.FILTER_BIDIR),
    ("NFX_SIDE_IN", L.SIDE_IN), ("NFX_SIDE_OUT", L.SIDE_OUT), ("NFX_TX_SLOTS", L.TX_SLOTS),
    ("NFX_TCP_FIN", L.TCP_FIN), ("NFX_TCP_SYN", L.TCP_SYN), ("NFX_TCP_RST", L.TCP_RST), ("NFX_TCP_ACK", L.TCP_ACK),
    ("NFX_IDS_MAX_SIGS", L.IDS_MAX_SIGS), ("NFX_IDS_SIG_LEN", L.IDS_SIG_LEN),
    ("NFX_SW_MAX_PORTS", L.SW_MAX_PORTS), ("NFX_SW_MAX_WILD", L.SW_MAX_WILD), ("NFX_SW_MAX_RULES", L.SW_MAX_RULES),
    ("NFX_SW_OUTPUT", L.SW_OUTPUT), ("NFX_SW_SET_TOS", L.SW_SET_TOS), ("NFX_SW_CLEAR_TOS", L.SW_CLEAR_TOS),
    ("NFX_SW_TO_CTRL", L.SW_TO_CTRL), ("NFX_SW_DROP", L.SW_DROP), ("NFX_GEN_MAGIC", L.GEN_MAGIC),
    ("NFX_LAT_BUCKETS", L.LAT_BUCKETS), ("NFX_LAT_SUB", L.LAT_SUB),
    ("NFX_STATELET_WORDS", L.STATELET_WORDS), ("NFX_STF_VALUE", L.STF_VALUE),
    ("NFX_STATELET_INC_SHIFT", L.STATELET_INC_SHIFT),
    ("NFX_TOS_IBC", L.TOS_IBC), ("NFX_IBC_MAGIC", L.IBC_MAGIC), ("NFX_TOS_FIRE", L.TOS_FIRE),
    ("NFX_FIRE_MAGIC", L.FIRE_MAGIC), ("NFX_SW_MAX_FIRED", L.SW_MAX_FIRED),
    ("NFX_SW_PORT_SLOTS", L.SW_PORT_SLOTS), ("NFX_SW_PORT_HOST", L.SW_PORT_HOST), ("NFX_SW_PORT_NF", L.SW_PORT_NF),
])
def test_defines_match(cname, value):
    assert c_define(cname) == value


def test_stat_max():
    assert c_enum("nfx_stat")["NFX_STAT_MAX"] == L.STAT_MAX
    assert max(L.Stat) < L.STAT_MAX


@pytest.mark.parametrize("stf,struct", [(L.StfNat, L.NatEntry), (L.StfIdsFlow, L.IdsFlow), (L.StfIdsHost, L.IdsHost)])
def test_statelet_field_bits_follow_struct_order(stf, struct):
    """Field bit i is the i-th field of the value struct, pad left out (nfx.h, statelets)."""
    fields = [name for name, _ in struct._fields_ if name != "pad"]
    assert [m.name.lower() for m in sorted(stf)] == fields
