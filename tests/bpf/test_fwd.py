"""The bare XDP forward (bpf/fwd.bpf.c) through BPF_PROG_TEST_RUN: a frame in on one side leaves
with the other side's MACs, redirected to the other side's devmap slot, bytes past the MACs
untouched; what is not from a side, or has no slot to go to, is dropped and counted."""
import ctypes as ct

import pytest
from scapy.all import IP, UDP, Ether, Raw, raw

from nfx import layout as L
from nfx.bench.xdp_forward import XdpForward
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from tests.scratch import Scratch

XDP_DROP, XDP_REDIRECT = 1, 4
OWN = (bytes.fromhex("020000000a00"), bytes.fromhex("020000000a01"))      # our MAC, side 0 / 1
NEXT = (bytes.fromhex("020000000b00"), bytes.fromhex("020000000b01"))     # the next hop's, side 0 / 1


def port_cfg(ifindex: tuple[int, int]) -> L.PortCfg:
    pc = L.PortCfg()
    for side in (0, 1):
        pc.ifindex[side] = ifindex[side]
        ct.memmove(pc.mac[side].addr, OWN[side], 6)
        ct.memmove(pc.peer_mac[side].addr, NEXT[side], 6)
    return pc


@pytest.fixture(scope="module")
def bed():
    s = Scratch("tfwd")
    try:
        ns = s.ns("n")
        s.veth("fi", ns, "fI", ns)
        s.veth("fo", ns, "fO", ns)
        yield ns, {n: netns.ifindex(n, ns) for n in ("fi", "fo", "fI")}
    finally:
        s.close()


def frame() -> bytes:
    return raw(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src="10.0.1.2", dst="10.0.2.2") /
               UDP(sport=5000, dport=9000) / Raw(b"x" * 40))


def run(fwd, ns, ifindex):
    with netns.enter(ns):
        v, out, _ = prog_test_run(fwd.fn.fd, frame(), ingress_ifindex=ifindex)
    return v, out


def test_each_side_goes_out_the_other(bed):
    ns, idx = bed
    with XdpForward(ns, port_cfg((idx["fi"], idx["fo"]))) as fwd:
        for ingress, out_side, n in (("fi", 1, 3), ("fo", 0, 2)):
            for _ in range(n):
                v, out = run(fwd, ns, idx[ingress])
                assert v == XDP_REDIRECT
                assert out[:6] == NEXT[out_side] and out[6:12] == OWN[out_side]
                assert out[12:] == frame()[12:]          # nothing past the MACs changes
        # the devmap slots are the sides' interfaces: where the redirects went
        assert [fwd.maps.fwd_tx.get(L.u32(s)).value for s in (0, 1)] == [idx["fi"], idx["fo"]]
        assert fwd.stats() == {"v_redirect": 5}


def test_not_a_side_is_dropped(bed):
    ns, idx = bed
    with XdpForward(ns, port_cfg((idx["fi"], idx["fo"]))) as fwd:
        v, out = run(fwd, ns, idx["fI"])
        assert v == XDP_DROP and out == frame()
        assert fwd.stats() == {"v_drop": 1, "r_no_port": 1}


def test_no_slot_for_the_other_side_drops(bed):
    ns, idx = bed
    with XdpForward(ns, port_cfg((idx["fi"], 0))) as fwd:       # side 1 has no interface
        v, _ = run(fwd, ns, idx["fi"])
        assert v == XDP_DROP
        assert fwd.stats() == {"v_drop": 1, "r_redirect_fail": 1}


def test_attach_and_detach(bed):
    from nfx.loader import attach
    ns, idx = bed
    with XdpForward(ns, port_cfg((idx["fi"], idx["fo"]))) as fwd:
        fwd.attach(["fi", "fo"])
        assert set(attach.xdp_attachments(ns)) >= {"fi", "fo"}
    assert not {"fi", "fo"} & set(attach.xdp_attachments(ns))
