"""The switch's stamper (sw_stamp in bpf/switch.bpf.c) under BPF_PROG_TEST_RUN: a flow packet from a
host port to NF ports leaves with the flow's packet count after its IPv4 datagram, counted per
5-tuple (so per direction); nothing else is stamped; a clone carries the same stamp as the
original. Ports are made-up ifindexes except for the clone test, whose copy really leaves on a
veth and is read back there."""
import socket
import struct

import pytest
from scapy.all import ARP, Ether, IP, UDP, raw

from nfx import layout as L
from nfx.control.switch import Match, Rule, Switch
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run_skb
from tests.scratch import Scratch

TC_ACT_REDIRECT = 7
HOST_A, HOST_B, NF1, NF2 = 900011, 900012, 900013, 900014
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def udp(src="10.0.1.1", dst="10.0.2.1", sport=1000, dport=2000, payload=b"x" * 32, tos=0):
    return raw(Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst, tos=tos) / UDP(sport=sport, dport=dport) / payload)


def trailer(count: int) -> bytes:
    return struct.pack(">II", L.STAMP_MAGIC, count)


@pytest.fixture(scope="module")
def loaded():
    return Switch.load("tstamp-sw")


@pytest.fixture
def sw(loaded):
    s = loaded
    for r in s.rules():
        s.remove(r.id)
    s.maps.sw_stamps.clear()
    for p, role in ((HOST_A, "host"), (HOST_B, "host"), (NF1, "nf"), (NF2, "nf")):
        s.set_port_role(p, role)
    s.add_wild(Match(in_port=HOST_A), Rule(output=[NF1]))
    s.add_wild(Match(in_port=HOST_B), Rule(output=[NF1]))
    s.add_wild(Match(in_port=NF1), Rule(output=[HOST_B]))
    s.set_stamp(True)
    yield s
    s.set_stamp(False)


def run(sw, frame, in_port=HOST_A):
    verdict, out, _ = prog_test_run_skb(sw.fn.fd, frame, ingress_ifindex=in_port)
    return verdict, out


def delta(sw, before, name):
    return sw.stats().get(name, 0) - before.get(name, 0)


def test_each_direction_of_a_flow_counts_its_own_packets(sw):
    before = sw.stats()
    fwd, back, other = udp(), udp(src="10.0.2.1", dst="10.0.1.1", sport=2000, dport=1000), udp(sport=1001)
    for i in (1, 2, 3):
        assert run(sw, fwd) == (TC_ACT_REDIRECT, fwd + trailer(i))
    assert run(sw, back, HOST_B) == (TC_ACT_REDIRECT, back + trailer(1))
    assert run(sw, other) == (TC_ACT_REDIRECT, other + trailer(1))
    assert run(sw, back, HOST_B) == (TC_ACT_REDIRECT, back + trailer(2))
    assert sw.stamp_counts() == {("10.0.1.1", "10.0.2.1", 1000, 2000, 17): 3,
                                 ("10.0.2.1", "10.0.1.1", 2000, 1000, 17): 2,
                                 ("10.0.1.1", "10.0.2.1", 1001, 2000, 17): 1}
    assert delta(sw, before, "r_sw_stamped") == 6
    # the IP header is untouched: the trailer is past the datagram the total length names
    assert IP(run(sw, fwd)[1][14:]).len == len(fwd) - 14


def test_only_host_to_nf_flow_packets_get_a_stamp(sw):
    before = sw.stats()
    f = udp()
    assert run(sw, f, NF1) == (TC_ACT_REDIRECT, f)                 # from an NF, to a host
    sw.add_wild(Match(in_port=HOST_A, dport=3000), Rule(output=[HOST_B]), prio=1)
    g = udp(dport=3000)
    assert run(sw, g) == (TC_ACT_REDIRECT, g)                      # host to host
    sw.add_wild(Match(in_port=HOST_A, dport=3001), Rule(output=[NF1, HOST_B]), prio=1)
    h = udp(dport=3001)
    assert run(sw, h)[1] == h                                      # one copy would reach a host
    a = raw(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.1.1", pdst="10.0.1.2"))
    assert run(sw, a) == (TC_ACT_REDIRECT, a)                      # no flow: not stamped, counted
    assert delta(sw, before, "r_sw_stamp_skipped") == 1
    assert delta(sw, before, "r_sw_stamped") == 0 and sw.stamp_counts() == {}
    sw.set_stamp(False)
    assert run(sw, f) == (TC_ACT_REDIRECT, f)                      # off
    assert sw.stamp_counts() == {} and not sw.stamping()


def test_padding_gives_way_to_the_trailer(sw):
    f = udp(payload=b"p")                           # a 43-byte datagram, padded to 60 bytes
    padded = f + bytes(60 - len(f))
    assert run(sw, padded) == (TC_ACT_REDIRECT, f + trailer(1))


def test_setting_the_ibc_epoch_keeps_the_stamper_on(sw):
    sw.expect_ibc(77)
    assert sw.stamping() and sw.maps.sw_cfg.get(L.u32(0)).ibc_epoch == 77
    sw.expect_ibc(0)
    assert sw.stamping()


def test_a_clone_carries_the_original_stamp(sw):
    """Two NF ports: the clone to the second really leaves on a veth, the original's bytes are
    the test run's output; both carry the same count."""
    s = Scratch("tsc")
    try:
        ns = s.ns("n")
        s.veth("tsca", ns, "tscA", ns)
        idx = netns.ifindex("tsca", ns)
        sw.set_port_role(idx, "nf")
        sw.add_wild(Match(in_port=HOST_A, dport=4000), Rule(output=[NF1, idx]), prio=1)
        f = udp(dport=4000)
        with netns.enter(ns):
            rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            rx.bind(("tscA", 0))
            rx.settimeout(2)
            try:
                assert run(sw, f) == (TC_ACT_REDIRECT, f + trailer(1))
                assert run(sw, f) == (TC_ACT_REDIRECT, f + trailer(2))
                got = []
                while len(got) < 2:
                    data = rx.recv(4096)
                    if data[:14] == f[:14]:
                        got.append(data)
            finally:
                rx.close()
        assert got == [f + trailer(1), f + trailer(2)]
        sw.maps.sw_ports.delete(L.u32(idx))
    finally:
        s.close()


def test_a_frame_the_trailer_would_push_past_a_ports_mtu_goes_unstamped(sw):
    """A veth drops what its MTU does not fit, uncounted: the switch sends such a frame on as it is."""
    s = Scratch("tsm")
    try:
        ns = s.ns("n")
        s.veth("tsma", ns, "tsmA", ns)
        idx = netns.ifindex("tsma", ns)                 # MTU 1500
        sw.set_port_role(idx, "nf")
        sw.add_wild(Match(in_port=HOST_A, dport=4001), Rule(output=[idx]), prio=1)
        with netns.enter(ns):
            before = sw.stats()
            fits = udp(dport=4001, payload=bytes(1500 - 28 - 8))
            assert run(sw, fits)[1] == fits + trailer(1)
            full = udp(dport=4001, payload=bytes(1500 - 28))
            assert run(sw, full)[1] == full
            netns.ip("link", "set", "tsma", "mtu", "1508", ns=ns)
            assert run(sw, full)[1] == full + trailer(3)
        assert delta(sw, before, "r_sw_stamp_too_big") == 1 and delta(sw, before, "r_sw_stamped") == 2
        sw.maps.sw_ports.delete(L.u32(idx))
    finally:
        s.close()
