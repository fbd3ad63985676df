"""The switch's part of SHarP under BPF_PROG_TEST_RUN: each rule's last-hit stamp (idle
timeouts) and the in-band HSL messages (nfx_hsl.h): an instance's, taken from an NF-facing port
to the controller ring; the controller's TEST, taken from a host port only for an epoch it
announced; every other HSL mark from a host port dropped as forged. Ports are made-up ifindexes
(bpf_redirect only sets the verdict in a test run), as in test_switch.py."""
import os
import time

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw

from nfx import layout as L
from nfx.control.switch import Match, Rule, Switch
from nfx.errors import BadInput, NotFound
from nfx.frames import hsl_frame, parse_hsl
from nfx.loader.bpfsys import prog_test_run_skb

TC_ACT_SHOT, TC_ACT_REDIRECT = 2, 7
P_HOST, P_NF, P_NF2, P_UNSET = 910001, 910002, 910003, 910004
MAC = bytes.fromhex("02000000000a")
HSL_REASONS = ("r_sw_hsl", "r_sw_hsl_test", "r_sw_hsl_forged", "r_forged")


def udp(tos=0, dport=2000, payload=b"x" * 32):
    return raw(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / IP(src="10.0.1.1", dst="10.0.2.1", tos=tos)
               / UDP(sport=1000, dport=dport) / payload)


def hsl(kind, epoch, side=0, body=b'{"flows": 2}'):
    return hsl_frame(kind, epoch, side, body, MAC)


@pytest.fixture(scope="module")
def loaded():
    sw = Switch.load("tsw-hsl")
    reader = sw.ctrl_reader()
    yield sw, reader
    reader.close()


@pytest.fixture
def sw(loaded):
    """No rules, no expected tests, an empty ring; one catch-all rule that forwards to the host
    port, so a packet that is not consumed shows as a redirect and a hit."""
    s, reader = loaded
    for r in s.rules():
        s.remove(r.id)
    for e in s.expected_tests():
        s.forget_test(e)
    reader.drain()
    s.set_port_role(P_HOST, "host")
    s.set_port_role(P_NF, "nf")
    s.set_port_role(P_NF2, "nf")
    s.reader = reader
    s.fwd = s.add_wild(Match(), Rule(output=[P_HOST]), prio=100)
    return s


def run(sw, frame, in_port):
    verdict, out, _ = prog_test_run_skb(sw.fn.fd, frame, ingress_ifindex=in_port)
    return verdict, out


def delta(sw, before, name):
    return sw.stats().get(name, 0) - before.get(name, 0)


# ---- idle stamps ----
def test_last_hit_is_stamped_on_a_hit_and_moves_forward(sw):
    rid = sw.add_exact(("10.0.1.1", "10.0.2.1", 1000, 2000, "udp"), Rule(output=[P_NF]))
    assert sw.last_hit_ns(rid) is None                       # never hit
    run(sw, udp(dport=2001), P_HOST)                         # another rule's packet
    assert sw.last_hit_ns(rid) is None and sw.last_hit_ns(sw.fwd) is not None
    t0 = time.monotonic_ns()
    assert run(sw, udp(), P_HOST)[0] == TC_ACT_REDIRECT
    first = sw.last_hit_ns(rid)
    assert t0 <= first <= time.monotonic_ns()                # the clock of time.monotonic_ns()
    time.sleep(0.002)
    run(sw, udp(), P_HOST)
    second = sw.last_hit_ns(rid)
    assert second - first >= 2_000_000
    assert sw.counters()[rid] == (2, 2 * len(udp()))         # counters() as before


def test_last_hit_is_the_latest_over_cpus(sw):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    rid = sw.add_wild(Match(in_port=P_NF), Rule(output=[P_HOST]), prio=1)
    keep = os.sched_getaffinity(0)
    try:
        stamps = []
        for cpu in cpus[:2]:
            os.sched_setaffinity(0, {cpu})
            run(sw, udp(), P_NF)
            per_cpu = sw.maps.sw_counters.get(L.u32(rid))
            stamps.append(per_cpu[cpu].last_ns)
            time.sleep(0.001)
    finally:
        os.sched_setaffinity(0, keep)
    per_cpu = sw.maps.sw_counters.get(L.u32(rid))
    assert [per_cpu[c].last_ns for c in cpus[:2]] == stamps and stamps[0] < stamps[1]
    assert sw.last_hit_ns(rid) == stamps[1]
    assert sw.counters()[rid][0] == 2


def test_a_reused_rule_id_starts_unstamped_and_unknown_rules_are_refused(sw):
    rid = sw.add_wild(Match(in_port=P_NF), Rule(output=[P_HOST]), prio=1)
    run(sw, udp(), P_NF)
    assert sw.last_hit_ns(rid) is not None
    sw.remove(rid)
    with pytest.raises(NotFound):
        sw.last_hit_ns(rid)
    again = sw.add_wild(Match(in_port=P_NF), Rule(output=[P_HOST]), prio=1)
    assert again == rid and sw.last_hit_ns(again) is None
    for bad in (0, L.SW_RULE_HSL, -1):
        with pytest.raises(NotFound):
            sw.last_hit_ns(bad)


# ---- HSL messages ----
@pytest.mark.parametrize("kind", [L.HslKind.ACK, L.HslKind.DONE, L.HslKind.TEST])
@pytest.mark.parametrize("port", [P_NF, P_NF2])
def test_an_instances_message_goes_to_the_controller_and_no_further(sw, kind, port):
    f = hsl(kind, 12, side=1)
    before = sw.stats()
    assert run(sw, f, port)[0] == TC_ACT_SHOT                 # consumed
    (pkt,) = sw.reader.packets(count=1, timeout=2)
    assert pkt.rule == L.SW_RULE_HSL and pkt.hsl and pkt.in_port == port and pkt.data == f
    assert parse_hsl(pkt.data) == (kind, 12, 1, b'{"flows": 2}')
    assert delta(sw, before, "r_sw_hsl") == 1 and delta(sw, before, "v_drop") == 1
    assert delta(sw, before, "r_forged") == 0 and delta(sw, before, "r_sw_hsl_forged") == 0
    assert sw.counters()[sw.fwd] == (0, 0)                   # no rule saw it
    assert sw.reader.drain() == []


def test_a_rule_copy_is_not_an_hsl_record(sw):
    rid = sw.add_wild(Match(in_port=P_NF), Rule(to_ctrl=True), prio=1)
    run(sw, udp(), P_NF)
    (pkt,) = sw.reader.packets(count=1, timeout=2)
    assert pkt.rule == rid and not pkt.hsl and parse_hsl(pkt.data) is None


def test_the_controllers_test_packet_is_taken_from_a_host_port_while_expected(sw):
    sw.expect_test(33)
    sw.expect_test(34)
    assert sw.expected_tests() == [33, 34]
    f = hsl(L.HslKind.TEST, 33)
    before = sw.stats()
    assert run(sw, f, P_HOST)[0] == TC_ACT_SHOT
    (pkt,) = sw.reader.packets(count=1, timeout=2)
    assert pkt.hsl and pkt.in_port == P_HOST and parse_hsl(pkt.data)[:2] == (L.HslKind.TEST, 33)
    assert delta(sw, before, "r_sw_hsl_test") == 1 and delta(sw, before, "r_forged") == 0
    assert sw.counters()[sw.fwd] == (0, 0)
    # once forgotten, the same bytes from a host are forged
    sw.forget_test(33)
    assert sw.expected_tests() == [34]
    before = sw.stats()
    assert run(sw, f, P_HOST)[0] == TC_ACT_SHOT
    assert delta(sw, before, "r_forged") == 1 and delta(sw, before, "r_sw_hsl_forged") == 1
    assert delta(sw, before, "r_sw_hsl_test") == 0 and sw.reader.drain() == []
    sw.forget_test(33)                                        # forgetting twice is harmless


def _mangled(what):
    if what == "unknown epoch":
        return hsl(L.HslKind.TEST, 35)
    if what == "ack from a host":
        return hsl(L.HslKind.ACK, 33)
    if what == "start from a host":
        return hsl(L.HslKind.START, 33)
    if what == "bad magic":
        f = bytearray(hsl(L.HslKind.TEST, 33))
        f[42] ^= 0xFF                                         # first payload byte
        return bytes(f)
    if what == "no header":
        return udp(tos=L.TOS_HSL, dport=L.HSL_PORT, payload=b"")
    if what == "tcp":
        return raw(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") /
                   IP(src="10.0.1.1", dst="10.0.2.1", tos=L.TOS_HSL) / TCP(sport=L.HSL_PORT, dport=L.HSL_PORT) /
                   hsl(L.HslKind.TEST, 33)[42:])
    raise ValueError(what)


@pytest.mark.parametrize("what,port", [
    ("unknown epoch", P_HOST), ("ack from a host", P_HOST), ("start from a host", P_HOST),
    ("bad magic", P_HOST), ("no header", P_HOST), ("tcp", P_HOST),
    ("unknown epoch", P_UNSET), ("ack from a host", P_UNSET),
])
def test_other_hsl_marks_from_a_host_port_are_forged(sw, what, port):
    sw.expect_test(33)                                        # a test is due, just not this one
    before = sw.stats()
    assert run(sw, _mangled(what), port)[0] == TC_ACT_SHOT
    assert delta(sw, before, "r_forged") == 1 and delta(sw, before, "r_sw_hsl_forged") == 1
    assert delta(sw, before, "r_sw_hsl") == 0 and delta(sw, before, "r_sw_hsl_test") == 0
    assert sw.counters()[sw.fwd] == (0, 0) and sw.reader.drain() == []


@pytest.mark.parametrize("what", ["bad magic", "no header", "tcp"])
def test_a_malformed_message_from_an_nf_port_is_an_ordinary_packet(sw, what):
    before = sw.stats()
    assert run(sw, _mangled(what), P_NF)[0] == TC_ACT_REDIRECT
    assert sw.counters()[sw.fwd][0] == 1 and sw.reader.drain() == []
    assert all(delta(sw, before, n) == 0 for n in HSL_REASONS)


@pytest.mark.parametrize("port", [P_HOST, P_NF])
def test_ordinary_packets_are_unaffected(sw, port):
    sw.expect_test(33)
    before = sw.stats()
    for f in (udp(), udp(tos=0xB8), udp(dport=L.HSL_PORT)):   # HSL's port alone is no mark
        verdict, out = run(sw, f, port)
        assert verdict == TC_ACT_REDIRECT and out == f
    assert sw.counters()[sw.fwd][0] == 3 and sw.reader.drain() == []
    assert all(delta(sw, before, n) == 0 for n in HSL_REASONS)


def test_expected_epochs_are_bounded_and_checked(sw):
    for bad in (0, -1, 1 << 32):
        with pytest.raises(BadInput):
            sw.expect_test(bad)
    for e in range(1, L.HSL_EPOCHS + 1):
        sw.expect_test(e)
    sw.expect_test(5)                                         # again: no new entry
    with pytest.raises(BadInput, match="at most"):
        sw.expect_test(L.HSL_EPOCHS + 1)
    assert sw.expected_tests() == list(range(1, L.HSL_EPOCHS + 1))


def test_a_message_lost_to_a_full_ring_is_counted_there():
    small = Switch.load("tsw-hslring", defines={"NFX_SW_RING_PAGES": 1})    # a 4 KiB ring
    small.set_port_role(P_NF, "nf")
    f = hsl(L.HslKind.DONE, 8, body=b"z" * 200)
    for _ in range(50):
        assert run(small, f, P_NF)[0] == TC_ACT_SHOT
    st = small.stats()
    with small.ctrl_reader() as rd:
        got = rd.drain()
    assert 0 < st.get("r_sw_ring_full", 0) < 50
    assert len(got) == st["r_sw_hsl"] == 50 - st["r_sw_ring_full"]
    assert all(p.hsl and p.data == f for p in got)
