"""The enums and constants Python mirrors from bpf/include/, each read straight from the text of
the header its mirror module mirrors (nfx_<concern>.h -> nfx/layout/<concern>.py)."""
import re

import pytest

from nfx import layout as L
from nfx.paths import BPF_INCLUDE

HEADER_OF = {mod: header for header, mod in L.MODULES.items()}
# helpers, no layouts of their own (nfx_clock.h's per-CPU tick cache is the program's own: no
# Python reads it, no state carries it, an upgrade starts it afresh)
CODE_HEADERS = {"nfx_bpf.h", "nfx_nf.h", "nfx_st_write.h", "nfx_dup.h", "nfx_hold.h", "nfx_release.h",
                "nfx_stamp.h", "nfx_sw_stamp.h", "nfx_clock.h"}


def text(header: str) -> str:
    return re.sub(r"/\*.*?\*/", "", (BPF_INCLUDE / header).read_text(), flags=re.S)


def c_enum(header: str, name: str) -> dict[str, int]:
    body = re.search(r"enum %s\s*\{(.*?)\};" % name, text(header), re.S).group(1)
    out, nxt = {}, 0
    for item in filter(None, (x.strip() for x in body.split(","))):
        ident, _, val = item.partition("=")
        nxt = int(val.strip(), 0) if val else nxt
        out[ident.strip()] = nxt
        nxt += 1
    return out


def c_define(header: str, name: str) -> int:
    return int(re.search(r"#define %s\s+(\w+)" % name, text(header)).group(1).rstrip("u"), 0)


def test_every_header_is_mirrored_or_code():
    present = {p.name for p in BPF_INCLUDE.glob("*.h")}
    assert present == set(L.MODULES) | CODE_HEADERS
    assert set(L.MODULES) == set(L.LAYOUT_HEADERS)


@pytest.mark.parametrize("header", sorted(L.MODULES))
def test_every_struct_of_a_header_is_mirrored_by_its_module(header):
    structs = set(re.findall(r"^struct (nfx_\w+)\s*\{", text(header), re.M))
    assert structs == set(L.MODULES[header].MIRRORS)


@pytest.mark.parametrize("cname,pyenum,prefix", [
    ("nfx_stat", L.Stat, "NFX_"), ("nfx_action", L.Action, "NFX_ACT_"),
    ("nfx_buf_kind", L.BufKind, "NFX_BUF_"),
    ("nfx_nat_timeout", L.NatTimeout, "NFX_TO_"), ("nfx_alert_kind", L.AlertKind, "NFX_ALERT_"),
    ("nfx_ids_global", L.IdsGlobal, "NFX_IDS_G_"),
    ("nfx_st_table", L.StTable, "NFX_ST_"), ("nfx_st_op", L.StOp, "NFX_ST_"),
    ("nfx_stf_nat", L.StfNat, "NFX_STF_NAT_"), ("nfx_stf_ids_flow", L.StfIdsFlow, "NFX_STF_FLOW_"),
    ("nfx_stf_ids_host", L.StfIdsHost, "NFX_STF_HOST_"),
    ("nfx_hsl_kind", L.HslKind, "NFX_HSL_"), ("nfx_sw_reason", L.SwReason, "NFX_SW_R_"),
])
def test_enums_match(cname, pyenum, prefix):
    header = "nfx_%s.h" % pyenum.__module__.rsplit(".", 1)[1]
    c = {k[len(prefix):]: v for k, v in c_enum(header, cname).items() if not k.endswith("_MAX")}
    assert c == {m.name: m.value for m in pyenum}


@pytest.mark.parametrize("mod,cname,pyname", [
    (L.flow, "NFX_LAYOUT_VERSION", "LAYOUT_VERSION"), (L.flow, "NFX_SIDE_IN", "SIDE_IN"),
    (L.flow, "NFX_SIDE_OUT", "SIDE_OUT"), (L.flow, "NFX_TX_SLOTS", "TX_SLOTS"),
    (L.flow, "NFX_TCP_FIN", "TCP_FIN"), (L.flow, "NFX_TCP_SYN", "TCP_SYN"), (L.flow, "NFX_TCP_RST", "TCP_RST"),
    (L.flow, "NFX_TCP_ACK", "TCP_ACK"), (L.flow, "NFX_STAMP_MAGIC", "STAMP_MAGIC"),
    (L.flow, "NFX_STAMP_LEN", "STAMP_LEN"),
    (L.gate, "NFX_MAX_FILTERS", "MAX_FILTERS"), (L.gate, "NFX_FILTER_USED", "FILTER_USED"),
    (L.gate, "NFX_FILTER_BIDIR", "FILTER_BIDIR"),
    (L.move, "NFX_TOS_IBC", "TOS_IBC"), (L.move, "NFX_IBC_MAGIC", "IBC_MAGIC"), (L.move, "NFX_TOS_FIRE", "TOS_FIRE"),
    (L.move, "NFX_FIRE_MAGIC", "FIRE_MAGIC"), (L.move, "NFX_MAX_PKT", "MAX_PKT"),
    (L.move, "NFX_RELEASE_SLOTS", "RELEASE_SLOTS"), (L.move, "NFX_HOLD_SLOTS", "HOLD_SLOTS"),
    (L.move, "NFX_RX_PEER", "RX_PEER"),
    (L.move, "NFX_RX_RELEASED", "RX_RELEASED"), (L.move, "NFX_RX_INJECTED", "RX_INJECTED"),
    (L.move, "NFX_RX_DUP_SRC", "RX_DUP_SRC"), (L.move, "NFX_RX_DUP_DST", "RX_DUP_DST"),
    (L.move, "NFX_DUP_TAG_HI", "DUP_TAG_HI"), (L.move, "NFX_DUP_TAG_B4", "DUP_TAG_B4"),
    (L.move, "NFX_DUP_TAG_SRC", "DUP_TAG_SRC"), (L.move, "NFX_DUP_TAG_DST", "DUP_TAG_DST"),
    (L.move, "NFX_DUP_SOURCE", "DUP_SOURCE"), (L.move, "NFX_DUP_SHADOW", "DUP_SHADOW"),
    (L.move, "NFX_DUP_HOLD_OWN", "DUP_HOLD_OWN"),
    (L.statelet, "NFX_STATELET_WORDS", "STATELET_WORDS"), (L.statelet, "NFX_STF_VALUE", "STF_VALUE"),
    (L.statelet, "NFX_STATELET_INC_SHIFT", "STATELET_INC_SHIFT"),
    (L.ids, "NFX_IDS_MAX_SIGS", "IDS_MAX_SIGS"), (L.ids, "NFX_IDS_SIG_LEN", "IDS_SIG_LEN"),
    (L.switch, "NFX_SW_MAX_PORTS", "SW_MAX_PORTS"), (L.switch, "NFX_SW_MAX_WILD", "SW_MAX_WILD"),
    (L.switch, "NFX_SW_MAX_RULES", "SW_MAX_RULES"), (L.switch, "NFX_SW_MAX_FIRED", "SW_MAX_FIRED"),
    (L.switch, "NFX_SW_PORT_SLOTS", "SW_PORT_SLOTS"), (L.switch, "NFX_SW_PORT_HOST", "SW_PORT_HOST"),
    (L.switch, "NFX_SW_PORT_NF", "SW_PORT_NF"), (L.switch, "NFX_SW_PORT_TRUNK", "SW_PORT_TRUNK"),
    (L.switch, "NFX_SW_MAX_STAMPS", "SW_MAX_STAMPS"),
    (L.switch, "NFX_SW_OUTPUT", "SW_OUTPUT"), (L.switch, "NFX_SW_SET_TOS", "SW_SET_TOS"),
    (L.switch, "NFX_SW_CLEAR_TOS", "SW_CLEAR_TOS"), (L.switch, "NFX_SW_TO_CTRL", "SW_TO_CTRL"),
    (L.switch, "NFX_SW_DROP", "SW_DROP"), (L.switch, "NFX_SW_TAG", "SW_TAG"),
    (L.switch, "NFX_SW_SPREAD", "SW_SPREAD"), (L.switch, "NFX_SW_SPREAD_PORTS", "SW_SPREAD_PORTS"),
    (L.switch, "NFX_SW_SPREAD_HASH", "SW_SPREAD_HASH"), (L.switch, "NFX_SW_SPREAD_SLICE", "SW_SPREAD_SLICE"), (L.switch, "NFX_SW_RULE_HSL", "SW_RULE_HSL"),
    (L.hsl, "NFX_TOS_HSL", "TOS_HSL"), (L.hsl, "NFX_HSL_MAGIC", "HSL_MAGIC"), (L.hsl, "NFX_HSL_PORT", "HSL_PORT"),
    (L.hsl, "NFX_HSL_EPOCHS", "HSL_EPOCHS"),
    (L.bench, "NFX_GEN_MAGIC", "GEN_MAGIC"), (L.bench, "NFX_LAT_BUCKETS", "LAT_BUCKETS"),
    (L.bench, "NFX_LAT_SUB", "LAT_SUB"), (L.keyread, "NFX_KR_MAX", "KR_MAX"),
])
def test_defines_match(mod, cname, pyname):
    assert c_define(HEADER_OF[mod], cname) == getattr(mod, pyname) == getattr(L, pyname)


def test_stat_max():
    assert c_enum("nfx_flow.h", "nfx_stat")["NFX_STAT_MAX"] == L.STAT_MAX
    assert max(L.Stat) < L.STAT_MAX
    assert c_enum("nfx_switch.h", "nfx_sw_reason")["NFX_SW_R_MAX"] == L.SW_R_MAX
    assert max(L.SwReason) < L.SW_R_MAX


def test_the_hsl_record_id_is_no_rules():
    assert L.SW_RULE_HSL >= L.SW_MAX_RULES


@pytest.mark.parametrize("stf,struct", [(L.StfNat, L.NatEntry), (L.StfIdsFlow, L.IdsFlow), (L.StfIdsHost, L.IdsHost)])
def test_statelet_field_bits_follow_struct_order(stf, struct):
    """Field bit i is the i-th field of the value struct, pad left out (nfx_statelet.h)."""
    fields = [name for name, _ in struct._fields_ if name != "pad"]
    assert [m.name.lower() for m in sorted(stf)] == fields


def test_release_slot_head_as_the_releaser_packs_it():
    """nfx/gate.py fills release slots with struct (SLOT_HEAD) and slice copies, not ctypes."""
    import ctypes as ct
    from nfx.gate import SLOT_DATA, SLOT_HEAD, SLOT_SIZE
    buf = bytearray(SLOT_SIZE)
    SLOT_HEAD.pack_into(buf, 0, 1234, 1, L.RX_INJECTED)
    buf[SLOT_DATA:SLOT_DATA + 3] = b"abc"
    s = L.ReleaseSlot.from_buffer(buf)
    assert (s.len, s.side, s.rx, bytes(s.data[:3])) == (1234, 1, L.RX_INJECTED, b"abc")
    assert SLOT_SIZE == ct.sizeof(L.ReleaseSlot)
