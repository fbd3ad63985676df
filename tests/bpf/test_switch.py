"""The switch program under BPF_PROG_TEST_RUN: lookup order, wildcard fields and priority,
TOS rewrite, controller ring, drop and miss, counters. Ports here are made-up ifindexes:
bpf_redirect only sets the verdict in a test run. Real forwarding, duplication and the
XDP stub are in tests/netns/test_switch_netns.py."""
import socket

import pytest
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, raw

from nfx import layout as L
from nfx.control.switch import Match, Rule, Switch, flow_key
from nfx.errors import BadInput, NotFound
from nfx.loader.bpfsys import prog_test_run_skb

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
# ifindexes that exist in no netns the tests touch (port_name() leaves them as ints)
P1, P2, P3, P4 = 900001, 900002, 900003, 900004
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def udp(src="10.0.1.1", dst="10.0.2.1", sport=1000, dport=2000, tos=0, payload=b"x" * 32):
    return raw(Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst, tos=tos) / UDP(sport=sport, dport=dport) / payload)


def tcp(src="10.0.1.1", dst="10.0.2.1", sport=1000, dport=80):
    return raw(Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def arp():
    return raw(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.1.1", pdst="10.0.1.2", hwsrc=MAC_A))


def ip_csum_ok(frame: bytes) -> bool:
    hdr = frame[14:14 + (frame[14] & 0xF) * 4]
    s = sum(int.from_bytes(hdr[i:i + 2], "big") for i in range(0, len(hdr), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


@pytest.fixture(scope="module")
def loaded():
    sw = Switch.load("tsw-bpf")
    reader = sw.ctrl_reader()
    yield sw, reader
    reader.close()


@pytest.fixture
def sw(loaded):
    """The loaded switch with no rules and an empty controller ring."""
    s, reader = loaded
    for r in s.rules():
        s.remove(r.id)
    reader.drain()
    # P1 faces a host, P2..P4 face NF instances; no IBC expected
    s.set_port_role(P1, "host")
    for p in (P2, P3, P4):
        s.set_port_role(p, "nf")
    s.expect_ibc(0)
    s.reader = reader
    return s


def run(sw, frame, in_port=P1, repeat=1):
    verdict, out, _ = prog_test_run_skb(sw.fn.fd, frame, ingress_ifindex=in_port, repeat=repeat)
    return verdict, out


def delta(sw, before, name):
    return sw.stats().get(name, 0) - before.get(name, 0)


def test_miss_drops_and_counts(sw):
    before = sw.stats()
    assert run(sw, udp())[0] == TC_ACT_SHOT
    assert delta(sw, before, "r_sw_miss") == 1
    assert delta(sw, before, "v_drop") == 1
    assert delta(sw, before, "r_ok") == 1


def test_exact_output_and_counters(sw):
    f = udp()
    rid = sw.add_exact(("10.0.1.1", "10.0.2.1", 1000, 2000, "udp"), Rule(output=[P2]))
    assert rid >= 1
    before = sw.stats()
    for _ in range(3):
        verdict, out = run(sw, f)
        assert verdict == TC_ACT_REDIRECT
        assert out == f                                  # output alone leaves the bytes alone
    assert delta(sw, before, "r_sw_hit_exact") == 3
    assert delta(sw, before, "v_redirect") == 3
    assert sw.counters()[rid] == (3, 3 * len(f))
    # another port or protocol is a different key
    assert run(sw, udp(dport=2001))[0] == TC_ACT_SHOT
    assert run(sw, tcp(dport=2000))[0] == TC_ACT_SHOT
    assert sw.counters()[rid] == (3, 3 * len(f))


def test_exact_wins_over_wildcard(sw):
    wid = sw.add_wild(Match(), Rule(drop=True), prio=0)
    eid = sw.add_exact(flow_key("10.0.1.1", "10.0.2.1", 1000, 2000, 17), Rule(output=[P2]))
    assert run(sw, udp())[0] == TC_ACT_REDIRECT
    assert run(sw, udp(sport=1001))[0] == TC_ACT_SHOT
    c = sw.counters()
    assert c[eid][0] == 1 and c[wid][0] == 1


def test_wildcard_priority_order(sw):
    before = sw.stats()
    broad = sw.add_wild(Match(in_port=P1), Rule(output=[P2]), prio=50)
    narrow = sw.add_wild(Match(src="10.0.1.0/24", dport=2000, proto="udp"), Rule(output=[P3]), prio=10)
    assert run(sw, udp())[0] == TC_ACT_REDIRECT
    assert sw.counters() == {broad: (0, 0), narrow: (1, len(udp()))}
    # slots follow prio, not insertion order
    assert [r.id for r in sw.rules() if r.kind == "wild"] == [narrow, broad]
    assert [r.prio for r in sw.rules() if r.kind == "wild"] == [10, 50]
    # a packet the narrow rule does not match falls to the broad one
    run(sw, udp(dport=2001))
    assert sw.counters()[broad][0] == 1
    # an even higher priority drop in front of both
    top = sw.add_wild(Match(dst="10.0.2.0/24"), Rule(drop=True), prio=1)
    assert run(sw, udp())[0] == TC_ACT_SHOT
    assert sw.counters()[top][0] == 1
    sw.remove(top)
    assert run(sw, udp())[0] == TC_ACT_REDIRECT
    assert sw.counters()[narrow][0] == 2
    assert delta(sw, before, "r_sw_hit_wild") == 4


def test_equal_prio_keeps_insertion_order(sw):
    a = sw.add_wild(Match(), Rule(output=[P2]), prio=5)
    b = sw.add_wild(Match(), Rule(output=[P3]), prio=5)
    run(sw, udp())
    assert sw.counters() == {a: (1, len(udp())), b: (0, 0)}


@pytest.mark.parametrize("match,hits", [
    (Match(in_port=P1), True),
    (Match(in_port=P2), False),
    (Match(src="10.0.1.1"), True),
    (Match(src="10.0.0.0/16"), True),
    (Match(src="10.0.2.0/24"), False),
    (Match(dst="10.0.2.1/32"), True),
    (Match(dst="10.0.1.0/24"), False),
    (Match(sport=1000), True),
    (Match(sport=999), False),
    (Match(dport=2000, proto="udp"), True),
    (Match(dport=2000, proto="tcp"), False),
    (Match(proto=17), True),
])
def test_wildcard_fields(sw, match, hits):
    rid = sw.add_wild(match, Rule(output=[P2]))
    assert (run(sw, udp(), in_port=P1)[0] == TC_ACT_REDIRECT) == hits
    assert sw.counters()[rid][0] == int(hits)


def test_non_ipv4_switched_by_in_port_only(sw):
    """ARP has an all-zero key: an in_port wildcard forwards it, an address wildcard cannot."""
    before = sw.stats()
    sw.add_wild(Match(src="10.0.0.0/8"), Rule(drop=True), prio=1)  # every 10.x packet, not ARP
    sw.add_wild(Match(dport=53), Rule(drop=True), prio=2)
    fwd = sw.add_wild(Match(in_port=P1), Rule(output=[P2, P3], set_tos=0x28), prio=3)
    verdict, out = run(sw, arp(), in_port=P1)
    assert verdict == TC_ACT_REDIRECT
    assert out == arp()                                  # no TOS rewrite outside IPv4
    assert sw.counters()[fwd][0] == 1
    assert run(sw, arp(), in_port=P2)[0] == TC_ACT_SHOT  # other port: miss
    assert delta(sw, before, "r_arp") == 2
    assert delta(sw, before, "r_sw_miss") == 1


def test_icmp_echo_key(sw):
    req = raw(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.1.1", dst="10.0.2.1") / ICMP(type=8, id=77, seq=1))
    rep = raw(Ether(src=MAC_B, dst=MAC_A) / IP(src="10.0.2.1", dst="10.0.1.1") / ICMP(type=0, id=77, seq=1))
    q = sw.add_exact(("10.0.1.1", "10.0.2.1", 77, 0, "icmp"), Rule(output=[P2]))
    r = sw.add_exact(("10.0.2.1", "10.0.1.1", 0, 77, "icmp"), Rule(output=[P1]))
    assert run(sw, req)[0] == TC_ACT_REDIRECT
    assert run(sw, rep, in_port=P2)[0] == TC_ACT_REDIRECT
    assert sw.counters()[q][0] == 1 and sw.counters()[r][0] == 1


@pytest.mark.parametrize("tos_in,rule,tos_out", [
    (0x00, Rule(output=[P2], set_tos=0xB8), 0xB8),
    (0x10, Rule(output=[P2], set_tos=0x28), 0x28),
    (0x28, Rule(output=[P2], set_tos=0x28), 0x28),      # no change, checksum untouched
    (0xB8, Rule(output=[P2], clear_tos=True), 0x00),
    (0x00, Rule(output=[P2], clear_tos=True), 0x00),
])
def test_tos_rewrite_keeps_checksum_valid(sw, tos_in, rule, tos_out):
    sw.add_wild(Match(), rule)
    f = udp(tos=tos_in)
    assert ip_csum_ok(f)
    verdict, out = run(sw, f)
    assert verdict == TC_ACT_REDIRECT
    assert out[15] == tos_out
    assert ip_csum_ok(out)
    # only the TOS byte and the header checksum changed
    diff = {i for i in range(len(f)) if f[i] != out[i]}
    assert diff <= {15, 24, 25}


def test_to_ctrl_copies_and_drops(sw):
    before = sw.stats()
    rid = sw.add_wild(Match(proto="udp"), Rule(to_ctrl=True))
    f = udp(payload=b"to-the-controller")
    assert run(sw, f, in_port=P3)[0] == TC_ACT_SHOT
    got = list(sw.reader.packets(count=1, timeout=2))
    assert got == [(P3, rid, f)]
    assert delta(sw, before, "v_drop") == 1
    assert sw.counters()[rid] == (1, len(f))


def test_to_ctrl_with_output_forwards_too(sw):
    rid = sw.add_wild(Match(), Rule(output=[P2], to_ctrl=True, set_tos=0x20))
    f = udp()
    verdict, out = run(sw, f)
    assert verdict == TC_ACT_REDIRECT and out[15] == 0x20
    (pkt,) = sw.reader.packets(count=1, timeout=2)
    assert pkt.rule == rid and pkt.data == f           # the controller sees it as it arrived


def test_large_packet_to_ctrl_is_truncated_to_snap(sw):
    sw.add_wild(Match(), Rule(to_ctrl=True))
    f = udp(payload=b"z" * 3000)
    run(sw, f)
    (pkt,) = sw.reader.packets(count=1, timeout=2)
    assert pkt.data == f[:1536]


def test_drop_beats_output(sw):
    rid = sw.add_wild(Match(), Rule(output=[P2], drop=True))
    assert run(sw, udp())[0] == TC_ACT_SHOT
    assert sw.counters()[rid][0] == 1


def test_rule_without_action_drops(sw):
    sw.add_wild(Match(), Rule())
    assert run(sw, udp())[0] == TC_ACT_SHOT


def test_failed_clone_is_counted_and_the_rest_still_goes_out(sw):
    """Cloning to an ifindex that does not exist fails; the redirect to ports[0] stands."""
    before = sw.stats()
    sw.add_wild(Match(), Rule(output=[P2, P3, P4]))
    assert run(sw, udp())[0] == TC_ACT_REDIRECT
    assert delta(sw, before, "r_sw_clone_fail") == 2


def test_truncated_and_fragmented_ipv4(sw):
    """Key fields are filled as far as parsing got: addresses still match a wildcard, but a
    partial key never goes to the exact table."""
    before = sw.stats()
    rid = sw.add_wild(Match(src="10.0.1.0/24"), Rule(output=[P2]))
    sw.add_exact(("10.0.1.1", "10.0.2.1", 0, 0, "udp"), Rule(drop=True))
    frag = raw(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.1.1", dst="10.0.2.1", flags="MF") / UDP() / (b"x" * 8))
    no_l4 = udp()[:34]                                   # test-run wants at least the IPv4 header
    bad_ihl = bytearray(no_l4)
    bad_ihl[14] = 0x4F                                   # claims 60 bytes of header
    for f in (frag, no_l4, bytes(bad_ihl)):
        assert run(sw, f)[0] == TC_ACT_REDIRECT
    assert delta(sw, before, "r_fragment") == 1
    assert delta(sw, before, "r_trunc_l4") == 1
    assert delta(sw, before, "r_trunc_ip") == 1
    assert delta(sw, before, "r_sw_hit_exact") == 0
    assert sw.counters()[rid][0] == 3


def test_remove_and_listing(sw):
    e = sw.add_exact(("10.0.1.1", "10.0.2.1", 1000, 2000, "udp"), Rule(output=[P2], set_tos=4))
    w = sw.add_wild(Match(in_port=P1, src="10.0.0.0/8", dport=53, proto="udp"), Rule(to_ctrl=True), prio=7)
    rules = {r.id: r for r in sw.rules()}
    assert rules[e].kind == "exact" and rules[e].match == ("10.0.1.1", "10.0.2.1", 1000, 2000, 17)
    assert rules[e].rule == Rule(output=[P2], set_tos=4)
    assert rules[w].kind == "wild" and rules[w].prio == 7
    assert rules[w].match == Match(in_port=P1, src="10.0.0.0/8", dport=53, proto=17)
    sw.remove(e)
    assert run(sw, udp())[0] == TC_ACT_SHOT
    assert e not in sw.counters()
    with pytest.raises(NotFound):
        sw.remove(e)
    # the freed id is handed out again, with fresh counters
    again = sw.add_exact(("10.0.1.1", "10.0.2.1", 1000, 2000, "udp"), Rule(output=[P2]))
    assert again == e and sw.counters()[again] == (0, 0)


def test_rule_ids_go_lowest_free_first_past_the_first_chunk(sw):
    """_free_rule_id reads the rule slots a chunk at a time: the lowest free id is found in a
    later chunk, a hole below is taken first, and the shared range is searched on its own."""
    n = sw.FREE_SCAN + 5
    ids = [sw.add_exact(("10.0.9.1", "10.0.2.1", 1000 + i, 2000, "udp"), Rule(drop=True)) for i in range(n)]
    assert ids == list(range(1, n + 1))
    assert sw.add_exact(("10.0.9.2", "10.0.2.1", 1, 2000, "udp"), Rule(drop=True)) == n + 1
    sw.remove(ids[3])
    assert sw.add_exact(("10.0.9.3", "10.0.2.1", 1, 2000, "udp"), Rule(drop=True)) == ids[3]
    assert sw.shared_rule(Rule(drop=True)) == sw.SHARED_RULES
    assert sw.shared_rule(Rule(drop=True)) == sw.SHARED_RULES + 1


def test_exact_replace_frees_old_rule(sw):
    k = ("10.0.1.1", "10.0.2.1", 1000, 2000, "udp")
    old = sw.add_exact(k, Rule(drop=True))
    new = sw.add_exact(k, Rule(output=[P2]))
    assert run(sw, udp())[0] == TC_ACT_REDIRECT
    assert [r.id for r in sw.rules()] == [new] and old not in sw.counters()


def test_bad_rules_rejected(sw):
    with pytest.raises(BadInput):
        sw.add_wild(Match(), Rule(output=[P2], set_tos=1, clear_tos=True))
    with pytest.raises(BadInput):
        sw.add_wild(Match(), Rule(output=[P1, P2, P3, P4, P1]))
    with pytest.raises(BadInput):
        sw.add_wild(Match(src="10.0.0.300/8"), Rule(drop=True))
    with pytest.raises(BadInput):
        sw.add_wild(Match(proto="sctp"), Rule(drop=True))
    assert sw.rules() == []


def test_wildcard_table_full(sw):
    for i in range(L.SW_MAX_WILD):
        sw.add_wild(Match(dport=i + 1), Rule(drop=True), prio=i)
    with pytest.raises(BadInput):
        sw.add_wild(Match(), Rule(drop=True))
    assert len(sw.rules()) == L.SW_MAX_WILD
    assert run(sw, udp(dport=L.SW_MAX_WILD))[0] == TC_ACT_SHOT
    assert sw.counters()[max(sw.counters())][0] == 1   # the last slot is reachable


def test_ring_full_is_counted():
    small = Switch.load("tsw-ring", defines={"NFX_SW_RING_PAGES": 1})   # a 4 KiB ring
    small.add_wild(Match(), Rule(to_ctrl=True))
    f = udp()
    run(small, f, repeat=500)
    st = small.stats()
    assert 0 < st.get("r_sw_ring_full", 0) < 500
    with small.ctrl_reader() as rd:
        got = rd.drain()
    assert len(got) + st["r_sw_ring_full"] == 500
    assert all(p.data == f for p in got)


def test_ifindex_and_host_order_helpers():
    k = flow_key("10.0.1.1", "10.0.2.1", 1000, 2000, "udp")
    assert k.sport == socket.htons(1000) and k.proto == 17
    assert bytes(k)[:4] == socket.inet_aton("10.0.1.1")


# ---- armed rules and triggers ----
def trigger(token):
    from nfx.frames import trigger_frame
    return trigger_frame(token, bytes.fromhex(MAC_A.replace(":", "")))


@pytest.fixture
def armed(sw):
    """src (P2) in force; dst (P3) armed above it with token T."""
    T = 0x1234_5678_9ABC_DEF1
    old = sw.add_wild(Match(in_port=P1), Rule(output=[P2]), prio=20)
    new = sw.add_wild(Match(in_port=P1), Rule(output=[P3], token=T), prio=10)
    yield sw, T, old, new
    sw.forget_token(T)


def test_armed_rule_is_passed_over_until_fired(armed):
    sw, T, old, new = armed
    before = sw.stats()
    assert run(sw, udp())[0] == TC_ACT_REDIRECT
    assert sw.counters() == {old: (1, len(udp())), new: (0, 0)}
    assert delta(sw, before, "r_sw_armed") == 1
    assert sw.fired(T) is None
    assert [r.rule.token for r in sw.rules() if r.id == new] == [T]


def test_trigger_fires_consumed_and_stamped(armed):
    sw, T, old, new = armed
    import time
    t0 = time.monotonic_ns()
    before = sw.stats()
    assert run(sw, trigger(T), in_port=P4)[0] == TC_ACT_SHOT     # consumed, on any NF port
    assert t0 <= sw.fired(T) <= time.monotonic_ns()
    assert delta(sw, before, "r_sw_fired") == 1 and delta(sw, before, "v_drop") == 1
    assert sw.counters()[new] == (0, 0) and sw.counters()[old] == (0, 0)   # matched no rule
    assert run(sw, udp())[0] == TC_ACT_REDIRECT
    assert sw.counters()[new][0] == 1 and sw.counters()[old][0] == 0
    # a second trigger keeps the first stamp
    first = sw.fired(T)
    run(sw, trigger(T), in_port=P3)
    assert sw.fired(T) == first
    sw.forget_token(T)
    assert sw.fired(T) is None
    run(sw, udp())
    assert sw.counters()[old][0] == 1                     # armed again without its token


def test_trigger_before_the_rule_still_counts(sw):
    T = 77
    run(sw, trigger(T), in_port=P3)
    old = sw.add_wild(Match(), Rule(output=[P2]), prio=20)
    new = sw.add_exact(("10.0.1.1", "10.0.2.1", 1000, 2000, "udp"), Rule(output=[P3], token=T))
    run(sw, udp())
    assert sw.counters()[new][0] == 1 and sw.counters()[old][0] == 0
    sw.forget_token(T)


def test_armed_exact_rule_falls_through_to_wildcards(sw):
    old = sw.add_wild(Match(), Rule(output=[P2]), prio=20)
    new = sw.add_exact(("10.0.1.1", "10.0.2.1", 1000, 2000, "udp"), Rule(output=[P3], token=99))
    run(sw, udp())
    assert sw.counters()[old][0] == 1 and sw.counters()[new][0] == 0


@pytest.mark.parametrize("change", ["token", "magic", "tos"])
def test_other_triggers_fire_nothing(armed, change):
    sw, T, old, new = armed
    f = bytearray(trigger(T if change != "token" else T + 1))
    if change == "magic":
        f[42] ^= 0xFF                 # first payload byte (eth 14 + ip 20 + udp 8)
    if change == "tos":
        f[15] = 0
    before = sw.stats()
    run(sw, bytes(f), in_port=P3)
    # another token fires that token only; a broken trigger is an ordinary packet
    assert delta(sw, before, "r_sw_fired") == (change == "token")
    assert sw.fired(T) is None
    sw.forget_token(T + 1)
    run(sw, udp())
    assert sw.counters()[new][0] == 0


def test_a_new_controller_forgets_tokens_no_rule_is_armed_with(sw):
    run(sw, trigger(501), in_port=P3)
    run(sw, trigger(502), in_port=P3)
    kept = sw.add_wild(Match(), Rule(output=[P3], token=502))
    assert sw.forget_unused_tokens() == 1
    assert sw.fired(501) is None and sw.fired(502) is not None
    sw.remove(kept)
    assert sw.forget_unused_tokens() == 1 and sw.fired(502) is None


# ---- reserved marks from where nfx sends none (nfx issue 9) ----
P_UNSET = 900005       # a port with no role: treated as facing a host


@pytest.mark.parametrize("port", [P1, P_UNSET])
def test_trigger_from_a_host_port_fires_nothing(armed, port):
    sw, T, old, new = armed
    before = sw.stats()
    assert run(sw, trigger(T), in_port=port)[0] == TC_ACT_SHOT
    assert delta(sw, before, "r_forged") == 1 and delta(sw, before, "r_sw_fired") == 0
    assert sw.fired(T) is None and len(sw.maps["sw_fired"]) == 0
    run(sw, udp())
    assert sw.counters()[new][0] == 0 and sw.counters()[old][0] == 1     # the armed rule still waits


def test_fired_table_is_lru_and_never_full(sw):
    n = L.SW_MAX_FIRED + 200
    before = sw.stats()
    for t in range(1, n + 1):
        run(sw, trigger(0xABC000 + t), in_port=P3)
    assert delta(sw, before, "r_sw_fired") == n and delta(sw, before, "r_sw_fire_full") == 0
    assert len(sw.maps["sw_fired"]) <= L.SW_MAX_FIRED
    assert sw.fired(0xABC000 + n) is not None           # the newest is kept, the oldest went
    k, keys, _ = sw.maps["sw_fired"].export()
    for i in range(k):
        sw.forget_token(keys[i])


def ibc(epoch, proto="udp", src_mac=MAC_A):
    from nfx.frames import ibc_frame
    k = flow_key("10.0.1.1", "10.0.2.1", 1000, 2000, proto)
    return ibc_frame(k, bytes.fromhex(src_mac.replace(":", "")), epoch)


@pytest.mark.parametrize("expected,sent", [(0, 7), (7, 8), (7, 0)])
def test_forged_ibc_from_a_host_port_is_dropped(sw, expected, sent):
    sw.add_wild(Match(in_port=P1), Rule(output=[P2, P3]))
    sw.expect_ibc(expected)
    before = sw.stats()
    passed = sw.ibcs_passed()
    assert run(sw, ibc(sent))[0] == TC_ACT_SHOT
    assert delta(sw, before, "r_forged") == 1 and sum(c for c, _ in sw.counters().values()) == 0
    assert sw.ibcs_passed() == passed


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_the_controllers_ibc_passes_the_host_port(sw, proto):
    rid = sw.add_wild(Match(in_port=P1), Rule(output=[P2, P3]))
    sw.expect_ibc(41)
    before = sw.stats()
    passed = sw.ibcs_passed()
    verdict, out = run(sw, ibc(41, proto))
    assert verdict == TC_ACT_REDIRECT and out == ibc(41, proto) and sw.counters()[rid][0] == 1
    assert delta(sw, before, "r_forged") == 0
    # counted once sent on: the controller changes the flow's rule only after this (steer.ibc)
    assert sw.ibcs_passed() == passed + 1 and delta(sw, before, "r_sw_ibc") == 1


def test_an_ibc_no_rule_sends_on_is_not_counted_as_passed(sw):
    sw.add_wild(Match(in_port=P2), Rule(output=[P3]))       # nothing from the host port
    sw.expect_ibc(43)
    passed = sw.ibcs_passed()
    assert run(sw, ibc(43))[0] == TC_ACT_SHOT
    assert sw.ibcs_passed() == passed


def test_reserved_tos_without_magic_from_a_host_port_is_dropped(sw):
    sw.add_wild(Match(), Rule(output=[P2]))
    sw.expect_ibc(5)
    for tos in (L.TOS_IBC, L.TOS_FIRE):
        before = sw.stats()
        assert run(sw, udp(tos=tos), in_port=P1)[0] == TC_ACT_SHOT
        assert delta(sw, before, "r_forged") == 1
        # from an NF port the same packet is an ordinary one (a broken trigger included)
        assert run(sw, udp(tos=tos), in_port=P2)[0] == TC_ACT_REDIRECT
    # other TOS values from hosts pass untouched
    assert run(sw, udp(tos=0xB8), in_port=P1)[0] == TC_ACT_REDIRECT


def test_port_roles_read_back(sw):
    roles = sw.port_roles()
    assert roles[P1] == "host" and roles[P2] == roles[P3] == roles[P4] == "nf"
    with pytest.raises(BadInput):
        sw.set_port_role(P1, "uplink")
    # a join's trunk: an NF port that also takes tagged frames (tests/bpf/test_dup.py)
    sw.set_port_role(P4, "trunk")
    assert sw.port_roles()[P4] == "trunk"
