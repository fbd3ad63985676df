"""Spread rules under BPF_PROG_TEST_RUN: each flow goes to one port of the rule's group, the same
for every packet of the flow and for both its directions (hash), or, for a NAT's return traffic,
the instance whose share of the public port range holds the destination port (slice), exactly at
every share's bounds; flows spread evenly; rules above the spread still win. bpf_redirect only
sets the verdict in a test run, so the port picked is read from the group's per-port hit counts.
Real traffic over a 12-instance testbed: tests/netns/test_cluster_netns.py."""
import random
import struct

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, raw

from nfx import layout as L
from nfx.control.spread import Spread, slice_index, spread_index
from nfx.control.switch import Match, Rule, Switch, flow_key
from nfx.errors import BadInput
from nfx.loader.bpfsys import prog_test_run_skb
from nfx.nfs.nat import NatConfig
from nfx.testbed.builder import instance_config

TC_ACT_SHOT, TC_ACT_REDIRECT = 2, 7
HOST = 910001
GROUP = [910100 + i for i in range(12)]       # made-up ifindexes: 12 instances
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def frame(src, dst, sport, dport, proto="udp"):
    l4 = {"udp": lambda: UDP(sport=sport, dport=dport) / (b"x" * 18),
          "tcp": lambda: TCP(sport=sport, dport=dport, flags="A"),
          # an echo request carries its id as sport, a reply as dport (the switch's key)
          "icmp": lambda: ICMP(type=8 if sport else 0, id=sport or dport, seq=1)}[proto]()
    return raw(Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst) / l4)


@pytest.fixture(scope="module")
def loaded():
    return Switch.load("tsw-spread")


@pytest.fixture
def sw(loaded):
    for r in loaded.rules():
        loaded.remove(r.id)
    loaded.set_port_role(HOST, "host")
    return loaded


def run(sw, f, in_port=HOST):
    return prog_test_run_skb(sw.fn.fd, f, ingress_ifindex=in_port)[0]


def picked(sw, rid, f, in_port=HOST) -> int:
    """The index of the group's port this frame went to (exactly one count moved)."""
    before = sw.spread_hits(rid)
    assert run(sw, f, in_port) == TC_ACT_REDIRECT
    moved = [i for i, (a, b) in enumerate(zip(before, sw.spread_hits(rid))) if b != a]
    assert len(moved) == 1 and sw.spread_hits(rid)[moved[0]] == before[moved[0]] + 1
    return moved[0]


def flows(n, seed=7):
    rnd = random.Random(seed)
    out = set()
    while len(out) < n:
        out.add((f"10.0.1.{rnd.randrange(2, 250)}", f"10.0.2.{rnd.randrange(2, 250)}", rnd.randrange(1024, 65535),
                 rnd.randrange(1, 65535), rnd.choice(["udp", "tcp"])))
    return sorted(out)


def test_a_flow_sticks_to_one_port_the_one_the_mirror_names(sw):
    rid = sw.add_wild(Match(in_port=HOST), Rule(spread=GROUP))
    for src, dst, sp, dp, proto in flows(200):
        f = frame(src, dst, sp, dp, proto)
        first = picked(sw, rid, f)
        assert [picked(sw, rid, f) for _ in range(3)] == [first] * 3
        assert first == spread_index(Spread(), len(GROUP), flow_key(src, dst, sp, dp, proto))
    assert sum(sw.spread_hits(rid)) == 800 == sw.counters()[rid][0]


@pytest.mark.parametrize("proto", ["udp", "tcp", "icmp"])
def test_both_directions_of_a_flow_pick_the_same_port(sw, proto):
    """The ingress switch sees h1 -> h2, the egress switch h2 -> h1: with the same group order at
    both, an IDS's return traffic reaches the instance that saw the flow."""
    rid = sw.add_wild(Match(), Rule(spread=GROUP))
    seen = set()
    for src, dst, sp, dp, _ in flows(300, seed=11):
        if proto == "icmp":
            out, back = frame(src, dst, sp, 0, "icmp"), frame(dst, src, 0, sp, "icmp")
        else:
            out, back = frame(src, dst, sp, dp, proto), frame(dst, src, dp, sp, proto)
        i = picked(sw, rid, out)
        assert picked(sw, rid, back, in_port=GROUP[0]) == i
        seen.add(i)
    assert seen == set(range(len(GROUP)))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 12, 14])
def test_nat_return_traffic_reaches_the_instance_owning_the_port_at_every_bound(sw, n):
    """The builder gives NAT instance i of n its own share of the range (instance_config); the
    slice spread must pick exactly that instance for the first and last port of every share."""
    cfg = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.103")
    ports = [910200 + i for i in range(n)]
    rid = sw.add_wild(Match(), Rule(spread=ports, spread_by=Spread("slice", cfg.port_lo, cfg.port_hi)))
    before = sw.stats().get("r_sw_spread_no_slice", 0)
    for i in range(n):
        share = instance_config(cfg, i, n)
        for port in (share.port_lo, share.port_hi):
            assert slice_index(port, cfg.port_lo, cfg.port_hi, n) == i
            f = frame("10.0.2.2", "10.0.2.100", 53, port)
            assert picked(sw, rid, f, in_port=HOST) == i, f"port {port} of instance {i}'s {share.port_lo}-{share.port_hi}"
            # an ICMP echo reply's id is a public port too
            assert picked(sw, rid, frame("10.0.2.2", "10.0.2.101", 0, port, "icmp")) == i
    assert sw.stats().get("r_sw_spread_no_slice", 0) == before
    # outside the range: hashed (as the mirror says), and counted
    for port in (cfg.port_lo - 1, cfg.port_hi + 1, 1, 65535):
        k = flow_key("10.0.2.2", "10.0.2.100", 53, port, "udp")
        assert picked(sw, rid, frame("10.0.2.2", "10.0.2.100", 53, port)) == \
            spread_index(Spread("slice", cfg.port_lo, cfg.port_hi), n, k) == (spread_index(Spread(), n, k))
    assert sw.stats()["r_sw_spread_no_slice"] == before + 4


def test_every_port_of_a_small_range_goes_to_its_owner(sw):
    """A range of 37 ports over 12 instances (uneven shares): every port, not only the bounds."""
    ports = GROUP
    rid = sw.add_wild(Match(), Rule(spread=ports, spread_by=Spread("slice", 40000, 40036)))
    cfg = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.103", port_lo=40000, port_hi=40036)
    owner = {p: i for i in range(12) for p in range(instance_config(cfg, i, 12).port_lo,
                                                       instance_config(cfg, i, 12).port_hi + 1)}
    assert sorted(owner) == list(range(40000, 40037))
    for p, i in owner.items():
        assert picked(sw, rid, frame("10.0.2.2", "10.0.2.100", 80, p, "tcp")) == i


def test_ten_thousand_flows_spread_evenly_over_twelve_ports(sw):
    rid = sw.add_wild(Match(in_port=HOST), Rule(spread=GROUP))
    base = bytearray(frame("10.0.1.2", "10.0.2.2", 1, 1))
    rnd = random.Random(3)
    want = [0] * len(GROUP)
    for _ in range(10000):
        sp, dp = rnd.randrange(1024, 65536), rnd.randrange(1, 65536)
        struct.pack_into("!HH", base, 34, sp, dp)          # UDP ports: the IPv4 header is unchanged
        assert run(sw, bytes(base)) == TC_ACT_REDIRECT
        want[spread_index(Spread(), len(GROUP), flow_key("10.0.1.2", "10.0.2.2", sp, dp, "udp"))] += 1
    got = sw.spread_hits(rid)
    assert got == want                                    # the kernel picks what the mirror says
    mean = 10000 / len(GROUP)                              # ~833; binomial sd ~28
    assert min(got) > 0.85 * mean and max(got) < 1.15 * mean, got


def test_rules_above_the_spread_still_win(sw):
    """Moves install exact rules and higher-priority wildcards above the default plan (prio 1000)."""
    spread = sw.add_wild(Match(in_port=HOST), Rule(spread=GROUP), prio=1000)
    f = frame("10.0.1.5", "10.0.2.2", 4000, 80, "tcp")
    i = picked(sw, spread, f)
    other = GROUP[(i + 1) % len(GROUP)]
    ex = sw.add_exact(("10.0.1.5", "10.0.2.2", 4000, 80, "tcp"), Rule(output=[other]))
    hits = sw.spread_hits(spread)
    assert run(sw, f) == TC_ACT_REDIRECT
    assert sw.spread_hits(spread) == hits and sw.counters()[ex][0] == 1
    sw.remove(ex)
    move = sw.add_wild(Match(src="10.0.1.5", proto="tcp"), Rule(output=[other]), prio=999)
    assert run(sw, f) == TC_ACT_REDIRECT
    assert sw.spread_hits(spread) == hits and sw.counters()[move][0] == 1
    sw.remove(move)
    assert picked(sw, spread, f) == i


def test_a_spread_rule_reads_back_as_written_and_a_reused_id_starts_at_zero(sw):
    rule = Rule(spread=GROUP[:5], spread_by=Spread("slice", 20000, 59999), set_tos=0x28)
    rid = sw.add_wild(Match(), rule)
    [info] = [r for r in sw.rules() if r.id == rid]
    assert info.rule == rule
    picked(sw, rid, frame("10.0.2.2", "10.0.2.100", 53, 20000))
    sw.remove(rid)
    again = sw.add_wild(Match(), Rule(spread=GROUP[:3]))
    assert again == rid and sw.spread_hits(again) == [0, 0, 0]


def test_spread_keeps_the_clones(sw):
    """A spread rule's output ports still get clones (ports[1..]); the pick replaces ports[0]."""
    rid = sw.add_wild(Match(), Rule(spread=GROUP[:2], output=[GROUP[5]]))
    assert sw.rules()[0].rule.output == [GROUP[5]]
    before = sw.stats().get("r_sw_clone_fail", 0)
    picked(sw, rid, frame("10.0.1.2", "10.0.2.2", 5, 6))
    assert sw.stats().get("r_sw_clone_fail", 0) == before + 1     # made-up ifindex: the clone was tried


@pytest.mark.parametrize("rule,msg", [
    (Rule(spread=[910100 + i for i in range(17)]), "1..16 ports"),
    (Rule(spread=GROUP, spread_by=Spread("slice")), "port range"),
    (Rule(spread=GROUP, spread_by=Spread("slice", 500, 400)), "port range"),
    (Rule(spread=GROUP, spread_by=Spread("random")), "unknown spread mode"),
    (Rule(spread=GROUP, output=GROUP[:4]), "at most 4 output ports"),
    (Rule(spread=GROUP, output=GROUP[:2], tagged=True), "cannot be tagged"),
])
def test_bad_spread_rules_are_refused(sw, rule, msg):
    with pytest.raises(BadInput, match=msg):
        sw.add_wild(Match(), rule)
    assert sw.rules() == []


def test_a_group_holds_every_instance_a_testbed_can_have():
    assert L.SW_SPREAD_PORTS >= L.TX_SLOTS - 2
