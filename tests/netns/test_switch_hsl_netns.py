"""The switch's part of SHarP with real packets (the topology of test_switch_netns.py: h1 faces
the switch as a host, h2 and h3 as NF instances): HSL messages sent from an instance's veth and
the controller's test packet sent from the host's veth reach the controller ring and no host;
a forged one reaches nothing; rules stamp their last hit, and the test packet queues behind the
flow's packets on the host's link (what SHarP's test relies on)."""
import time

import pytest

from nfx import layout as L
from nfx.control.switch import Match, Rule
from nfx.frames import hsl_frame, parse_hsl
from tests.netns.test_switch_netns import Topo, counts


@pytest.fixture(scope="module")
def topo():
    t = Topo()
    try:
        t.build()
        t.sw.set_port_role(t.ports[0], "host")
        t.sw.set_port_role(t.ports[1], "nf")
        t.sw.set_port_role(t.ports[2], "nf")
        yield t
    finally:
        t.teardown()


@pytest.fixture
def sw(topo):
    """No rules, no expected tests, an empty ring; everything else goes h1 <-> h2, h3 -> h1, so
    an HSL message that were not consumed would reach a host."""
    s = topo.sw
    for r in s.rules():
        s.remove(r.id)
    for e in s.expected_tests():
        s.forget_test(e)
    s.add_wild(Match(in_port=topo.ports[0]), Rule(output=[topo.ports[1]]))
    s.add_wild(Match(in_port=topo.ports[1]), Rule(output=[topo.ports[0]]))
    s.add_wild(Match(in_port=topo.ports[2]), Rule(output=[topo.ports[0]]))
    with s.ctrl_reader() as rd:
        rd.drain()
    return s


def hsl(topo, host, kind, epoch, marker):
    return hsl_frame(kind, epoch, 1, marker, topo.macs[host - 1])


def delta(sw, before, name):
    return sw.stats().get(name, 0) - before.get(name, 0)


def test_instances_messages_reach_the_controller_only(topo, sw):
    before = sw.stats()
    taps = topo.taps()
    with sw.ctrl_reader() as rd:
        topo.send(2, hsl(topo, 2, L.HslKind.ACK, 7, b"hsl-ack-1"))
        topo.send(3, hsl(topo, 3, L.HslKind.DONE, 7, b"hsl-done-1"))
        got = list(rd.packets(count=2, timeout=3))
    assert counts(taps.collect(b"hsl-", expect=1, timeout=0.5)) == [0, 0, 0]
    assert sorted((p.in_port, parse_hsl(p.data)) for p in got) == [
        (topo.ports[1], (L.HslKind.ACK, 7, 1, b"hsl-ack-1")), (topo.ports[2], (L.HslKind.DONE, 7, 1, b"hsl-done-1"))]
    assert all(p.hsl for p in got)
    assert delta(sw, before, "r_sw_hsl") == 2 and delta(sw, before, "r_forged") == 0


def test_the_test_packet_follows_the_flow_and_forgeries_go_nowhere(topo, sw):
    flow = sw.add_exact((topo.addrs[0], topo.addrs[1], 4000, 5100, "udp"), Rule(output=[topo.ports[1]]))
    assert sw.last_hit_ns(flow) is None
    sw.expect_test(21)
    before = sw.stats()
    taps = topo.taps()
    with sw.ctrl_reader() as rd:
        t0 = time.monotonic_ns()
        topo.send(1, topo.frame(1, 2, 5100, b"hsl-flow-1"), count=200)
        topo.send(1, hsl(topo, 1, L.HslKind.TEST, 22, b"hsl-forged-1"))      # no such epoch
        topo.send(1, hsl(topo, 1, L.HslKind.ACK, 21, b"hsl-forged-2"))       # not a test
        topo.send(1, hsl(topo, 1, L.HslKind.TEST, 21, b"hsl-test-1"))
        (test,) = rd.packets(count=1, timeout=3)
        switched = sw.counters()[flow][0]                         # when the test was taken
        assert rd.drain() == []
    got = taps.collect(b"hsl-", expect=200)
    assert counts(got) == [0, 200, 0]                             # the flow; no HSL message
    assert test.hsl and test.in_port == topo.ports[0] and parse_hsl(test.data)[:2] == (L.HslKind.TEST, 21)
    assert delta(sw, before, "r_sw_hsl_test") == 1
    assert delta(sw, before, "r_forged") == 2 and delta(sw, before, "r_sw_hsl_forged") == 2
    # sent behind the flow on the host's link, the test is taken after all of it was switched
    assert switched == 200
    assert t0 <= sw.last_hit_ns(flow) <= time.monotonic_ns()
    assert sw.counters()[flow] == (200, 200 * len(topo.frame(1, 2, 5100, b"hsl-flow-1")))


def test_an_idle_rule_keeps_its_stamp(topo, sw):
    rid = sw.add_exact((topo.addrs[0], topo.addrs[1], 4000, 5101, "udp"), Rule(output=[topo.ports[1]]))
    topo.send(1, topo.frame(1, 2, 5101, b"hsl-idle-1"), count=3)
    deadline = time.monotonic() + 3
    while sw.counters()[rid][0] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    first = sw.last_hit_ns(rid)
    assert first is not None
    time.sleep(0.2)                                               # silence: the stamp stays
    assert sw.last_hit_ns(rid) == first
    assert time.monotonic_ns() - first >= 200_000_000
    topo.send(1, topo.frame(1, 2, 5101, b"hsl-idle-2"))
    deadline = time.monotonic() + 3
    while sw.last_hit_ns(rid) == first and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sw.last_hit_ns(rid) - first >= 200_000_000
