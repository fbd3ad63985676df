"""Typed map specs (nfx/loader/spec.py) and the gate's one port rule (nfx/gate.py), without root:
opening a set checks every declared pin before it opens any."""
import socket

import pytest

from nfx import layout as L
from nfx.errors import BadInput, BpfError
from nfx.gate import GATE_MAPS, check_ports
from nfx.loader.spec import MapSet, MapSpec
from nfx.nfs.ids import IDS_MAPS
from nfx.nfs.nat import NAT_MAPS
from nfx.filter import parse
from nfx.state.tables import tables


def _fake_pins(tmp_path, names):
    for n in names:
        (tmp_path / n).write_bytes(b"")
    return tmp_path


def test_missing_declared_pins_are_named(tmp_path):
    specs = NAT_MAPS.by_name()
    gone = {"nfx_marks", "nat_rev"}
    _fake_pins(tmp_path, [n for n in specs if n not in gone])
    with pytest.raises(BpfError) as e:
        NAT_MAPS.open_pinned(tmp_path)
    msg = str(e.value)
    assert "nfx_marks" in msg and "nat_rev" in msg
    # only the missing ones, and no optional map counts as missing
    assert "nat_fwd" not in msg and "nat_hosts" not in msg and "nfx_statelets" not in msg


def test_optional_maps_may_be_absent_but_are_declared(tmp_path):
    specs = NAT_MAPS.by_name()
    assert specs["nat_hosts"].optional and specs["nfx_statelets"].optional
    required = [n for n, s in specs.items() if not s.optional]
    _fake_pins(tmp_path, required[1:])
    with pytest.raises(BpfError, match=required[0]):
        NAT_MAPS.open_pinned(tmp_path)


def test_a_program_declares_the_gate_maps_once_and_its_own():
    nat, ids = NAT_MAPS.by_name(), IDS_MAPS.by_name()
    for name in GATE_MAPS.by_name():
        assert nat[name] is GATE_MAPS.by_name()[name] is ids[name]
    assert "nat_fwd" in nat and "nat_fwd" not in ids and "ids_flows" in ids
    assert NAT_MAPS.nat_fwd.value is L.NatEntry and L.NatEntryV2 in NAT_MAPS.nat_fwd.alt_values


def test_state_tables_come_from_the_specs():
    for kind, maps in (("nat", NAT_MAPS), ("ids", IDS_MAPS)):
        for t in tables(kind):
            assert t.spec is maps.by_name()[t.name]
            assert (t.key, t.value) == (t.spec.key, t.spec.value)


def test_an_opened_set_reads_by_attribute_and_by_name():
    class Two(MapSet):
        a = MapSpec(L.u32, L.u64)
        b = MapSpec(L.u32, L.u64, optional=True)
    m = Two({"a": "map a"})
    assert m.a == "map a" and m["a"] == "map a" and m.b is None and m.get("b") is None
    assert list(m) == ["a"] and len(m) == 1 and "a" in m and "b" not in m
    assert Two.a.name == "a"                      # on the class: the spec


def test_a_spec_is_declared_under_its_map_name():
    class Marks(MapSet):
        nfx_marks = MapSpec(L.FlowKey, L.Mark)
    assert Marks.nfx_marks.name == "nfx_marks"


def test_gate_filters_take_single_ports():
    assert check_ports(parse("proto=udp")) == (0, 0)
    assert check_ports(parse("sport=1030 dport=53")) == (socket.htons(1030), socket.htons(53))
    with pytest.raises(BadInput, match="single sport"):
        check_ports(parse("sport=1024-1100"))
    with pytest.raises(BadInput, match="range"):
        check_ports(parse("dport=1-9"))
