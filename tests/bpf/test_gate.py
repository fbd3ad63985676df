"""The gate's one writer (nfx/gate.py) and typed map opening (nfx/loader/spec.py) on a real NAT
instance: what Gate writes is what the datapath acts on, and reopening pins refuses a set with a
declared map missing."""
import os
import socket

import pytest
from scapy.all import Ether, IP, TCP, UDP, raw

from nfx import layout as L
from nfx.errors import BadInput, BpfError
from nfx.flows import make_key
from nfx.gate import Gate
from nfx.loader import bpfsys, netns, pin
from nfx.loader.bpfsys import prog_test_run
from nfx.nfs.nat import NAT, NAT_MAPS, NatConfig
from nfx.filter import parse
from tests.scratch import pin_dir, scratch_nf

XDP_DROP, XDP_REDIRECT = 1, 4
H1, H2 = "10.0.1.2", "10.0.2.2"


@pytest.fixture(scope="module")
def nf():
    with scratch_nf(NAT, "tgt", NatConfig(), max_flows=1024) as inst:
        yield inst


@pytest.fixture(autouse=True)
def fresh(nf):
    for m in (nf.maps.nfx_marks, nf.maps.nfx_filters, nf.maps.nfx_gate_cfg, nf.maps.nfx_drain, nf.maps.nfx_stats):
        m.clear()
    yield


def verdict(nf, sport, proto=UDP) -> int:
    frame = raw(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src=H1, dst=H2) / proto(sport=sport, dport=53))
    with netns.enter(nf.ns):
        return prog_test_run(nf.fn.fd, frame, ingress_ifindex=nf.idx["in"])[0]


def key(sport):
    return make_key(H1, H2, sport, 53, "udp")


def test_mark_raises_the_flag_and_the_datapath_obeys(nf):
    g = Gate(nf)
    assert g.cfg().marks == 0
    assert g.mark([key(1), key(2)], L.Action.DROP, epoch=7, peer=1, tag=9) == 2
    assert g.cfg().marks == 1
    m = g.marks()[bytes(key(1))]
    assert (m.action, m.epoch, m.peer, m.tag) == (int(L.Action.DROP), 7, 1, 9)
    assert verdict(nf, 1) == XDP_DROP and verdict(nf, 3) == XDP_REDIRECT


def test_unmark_skips_flows_with_no_mark(nf):
    """The kernel ends a delete batch at the first missing key: the marks after it go too."""
    g = Gate(nf)
    g.mark([key(1), key(2), key(3)], L.Action.DROP)
    assert g.unmark([key(1), key(99), key(3)]) == 2
    assert list(g.marks()) == [bytes(key(2))]
    assert g.unmark() == 1 and g.marks() == {}


def test_filter_from_a_filter_object(nf):
    g = Gate(nf)
    f = g.set_filter(2, parse("proto=udp sport=1030"), L.Action.DROP, peer=3, tag=5, bidir=False)
    assert (f.sport, f.dport, f.peer, f.tag) == (socket.htons(1030), 0, 3, 5)
    assert f.flags == L.FILTER_USED and g.cfg().filters == 3       # the count covers the slot
    assert list(g.filters()) == [2]
    assert verdict(nf, 1030) == XDP_DROP and verdict(nf, 1031) == XDP_REDIRECT
    assert verdict(nf, 1030, TCP) == XDP_REDIRECT
    g.clear_filter(2)
    assert g.filters() == {} and verdict(nf, 1030) == XDP_REDIRECT


def test_a_port_range_changes_nothing(nf):
    g = Gate(nf)
    with pytest.raises(BadInput, match="single dport"):
        g.set_filter(0, parse("dport=50-60"), L.Action.DROP)
    assert g.filters() == {} and g.cfg().filters == 0


def test_move_settings_and_drain(nf):
    g = Gate(nf)
    g.set_move_cfg(epoch=11, op=1)
    g.set_move_cfg(flushed_seq=5)
    c = g.move_cfg()
    assert (c.epoch, c.op, c.flushed_seq) == (11, 1, 5)
    with pytest.raises(BadInput):
        g.set_move_cfg(no_such=1)
    g.reset_move()
    c = g.move_cfg()
    assert (c.epoch, c.op, c.flushed_seq) == (0, 0, 5)          # the release count survives
    assert g.drain([key(1), key(2)]) == 2 and len(nf.maps.nfx_drain) == 2
    g.clear_drain()
    assert len(nf.maps.nfx_drain) == 0


def test_one_ring_reader_per_ring(nf):
    assert Gate(nf).ring() is Gate(nf).ring()


def test_buffer_ring_gives_back_what_the_gate_held(nf):
    """A BUFFER flow's packets come back from the ring as they arrived, with their flow, side and
    move epoch."""
    g, ring = Gate(nf), Gate(nf).ring()
    ring.poll(0)
    g.mark([make_key(H1, H2, 7001, 53, 17)], L.Action.BUFFER, epoch=31)
    try:
        assert [verdict(nf, 7001) for _ in range(3)] == [XDP_DROP] * 3
        got = ring.poll(0)
        assert [(p.kind, p.epoch, p.side, bytes(p.key)) for p in got] == \
            [(L.BufKind.PACKET, 31, 0, bytes(make_key(H1, H2, 7001, 53, 17)))] * 3
        assert UDP in Ether(got[0].data) and Ether(got[0].data)[UDP].sport == 7001
    finally:
        g.unmark()


def test_reopen_refuses_a_missing_declared_pin(nf):
    """NAT.open on pins with nfx_drain and nat_ports gone names both; with them all, it opens."""
    pd = pin_dir("tgtc")
    try:
        pd.mkdir(parents=True, exist_ok=True)
        for name in NAT_MAPS.by_name():
            if name not in ("nfx_drain", "nat_ports"):
                fd = bpfsys.obj_get(str(nf.pd / name))
                bpfsys.obj_pin(fd, str(pd / name))
                os.close(fd)
        with pytest.raises(BpfError) as e:
            NAT.open("copy", pd)
        assert "nfx_drain" in str(e.value) and "nat_ports" in str(e.value)
        again = NAT.open("again", nf.pd)
        assert again.maps.nat_fwd.info.id == nf.maps.nat_fwd.info.id
        assert again.maps["nfx_marks"].Value is L.Mark
    finally:
        pin.unpin(pd)


def test_a_fenced_gate_drops_every_flow_marked_or_not_until_unfenced(nf):
    """Failover (issue 14): the instance a pair failed over from forwards nothing, whatever its
    marks said (a PROCESS mark would skip the filters)."""
    g = Gate(nf)
    g.mark([key(1)], L.Action.PROCESS, epoch=3)
    assert verdict(nf, 1) == XDP_REDIRECT and verdict(nf, 2) == XDP_REDIRECT and not g.fenced()
    g.fence()
    assert g.fenced() and g.marks() == {}
    before = nf.stats().get("r_gate_drop", 0)
    assert [verdict(nf, p) for p in (1, 2, 3)] == [XDP_DROP] * 3
    assert verdict(nf, 4, TCP) == XDP_DROP
    assert nf.stats().get("r_gate_drop", 0) - before == 4
    g.unfence()
    assert not g.fenced() and verdict(nf, 1) == XDP_REDIRECT and verdict(nf, 5, TCP) == XDP_REDIRECT
    # a move's filter in the fence's slot is no fence
    g.set_filter(Gate.FENCE_SLOT, parse("proto=udp"), L.Action.DROP)
    assert not g.fenced()
    g.clear_filter(Gate.FENCE_SLOT)
