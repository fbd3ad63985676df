"""Steering's priority bookkeeping on in-memory switches that order wildcards like the real one:
any number of point() calls keeps working, the latest point() wins, and at every single rule
change each probe packet goes either where it went before the call or where the call sends it."""
import ipaddress
import random
import socket
import struct

import numpy as np
import pytest

from nfx import layout as L
from nfx.control import steer
from nfx.control.steer import PRIO_MIN, PRIO_TOP, Steering
from nfx.control.switch import Match, Rule, RuleInfo
from nfx.control.switch_rules import _key_tuple
from nfx.errors import BadInput, NfxError, NotFound
from nfx.filter import FLOW_DTYPE, parse


class FakeSwitch:
    """sw_wild/sw_exact/sw_rules as lists and dicts, with Switch's ordering and id rules."""
    SHARED_RULES = L.SW_MAX_RULES - 256

    def __init__(self, name):
        self.name = name
        self.slots: list[tuple[int, int, Match]] = []     # (prio, rule id, match) in slot order
        self.exact: dict[tuple, int] = {}
        self.rule: dict[int, Rule] = {}
        self.rules_calls = 0
        self.on_change = lambda: None

    def _new(self, rule):
        rid = next(i for i in range(1, L.SW_MAX_RULES) if i not in self.rule)
        self.rule[rid] = rule
        return rid

    def add_wild(self, match, rule, prio=100):
        if not 0 <= prio <= 0xFFFF:
            raise BadInput("prio must be 0..65535")
        if len(self.slots) >= L.SW_MAX_WILD:
            raise BadInput("all wildcard slots are in use")
        rid = self._new(rule)
        pos = next((i for i, (p, _, _) in enumerate(self.slots) if p > prio), len(self.slots))
        self.slots.insert(pos, (prio, rid, match))
        self.on_change()
        return rid

    def wild_used(self) -> int:
        return len(self.slots)

    def shared_rule(self, rule):
        rid = next(i for i in range(self.SHARED_RULES, L.SW_MAX_RULES) if i not in self.rule)
        self.rule[rid] = rule
        return rid

    def point_exact(self, keys, rid):
        for k in keys:
            self.exact[_key_tuple(k)] = rid
        self.on_change()

    def remove(self, rid):
        if rid not in self.rule:
            raise NotFound(f"no rule {rid}")
        self.slots = [s for s in self.slots if s[1] != rid]
        self.exact = {k: v for k, v in self.exact.items() if v != rid}
        del self.rule[rid]
        self.on_change()

    def rules(self):
        self.rules_calls += 1
        return [RuleInfo(rid, "wild", self.rule[rid], m, p) for p, rid, m in self.slots] + \
               [RuleInfo(rid, "exact", self.rule[rid], k) for k, rid in self.exact.items()]

    def close(self):
        pass

    def where(self, in_port, pkt) -> list:
        """The output of the rule a packet (src, dst, sport, dport, proto) hits."""
        if pkt in self.exact:
            return self.rule[self.exact[pkt]].output
        for _, rid, m in self.slots:
            if _hits(m, in_port, pkt):
                return self.rule[rid].output
        return []

    def band(self) -> list[int]:
        return [p for p, _, _ in self.slots if steer.PRIO_MIN <= p <= steer.PRIO_TOP]


def _hits(m: Match, in_port, pkt) -> bool:
    src, dst, sport, dport, proto = pkt

    def pfx(p, a):
        return p is None or ipaddress.IPv4Address(a) in ipaddress.IPv4Network(p, strict=False)
    return ((m.in_port is None or m.in_port == in_port) and pfx(m.src, src) and pfx(m.dst, dst)
            and m.sport in (0, sport) and m.dport in (0, dport) and m.proto in (0, proto))


def sharp():
    """The sharp testbed's record (inside switch si, outside switch so), with its default rules."""
    rec = {"name": "fake", "topology": "sharp", "nodes": {
        "h1": {"role": "host", "ns": "x-h1", "ifaces": {"si": "eth0"}, "mac": "02:00:00:00:00:01",
               "ifname": "eth0", "gen_if": "gen0"},
        "h2": {"role": "host", "ns": "x-h2", "ifaces": {"so": "eth0"}, "mac": "02:00:00:00:00:02", "ifname": "eth0"},
        "si": {"role": "switch", "ifaces": {"h1": "h1", "nf0": "nf0", "nf1": "nf1"}},
        "so": {"role": "switch", "ifaces": {"nf0": "nf0", "nf1": "nf1", "h2": "h2"}},
        "nf0": {"role": "nf", "ifaces": {"si": "si", "so": "so"}},
        "nf1": {"role": "nf", "ifaces": {"si": "si", "so": "so"}}}}
    sw = {n: FakeSwitch(n) for n in ("si", "so")}
    for n, h in (("si", "h1"), ("so", "h2")):
        sw[n].add_wild(Match(in_port=h), Rule(output=["nf0"]), prio=1000)
        sw[n].add_wild(Match(), Rule(output=[h]), prio=2000)
    return rec, sw


FILTERS = [parse(t) for t in ("all", "proto=udp", "dport=9000", "src=10.0.1.0/24 proto=tcp")]
PROBES = [("10.0.1.2", "10.0.2.2", 1024, 9000, 17), ("10.0.1.2", "10.0.2.2", 1024, 80, 17),
          ("10.0.1.2", "10.0.2.2", 1024, 80, 6), ("10.0.1.2", "10.0.2.2", 1024, 9000, 6),
          ("10.0.3.2", "10.0.2.2", 1024, 80, 6)]
TARGETS = [["nf0"], ["nf1"], ["nf0", "nf1"], ["nf1", "nf0"]]
DEFAULT = ["nf0"]


def covers(flt, pkt) -> bool:
    k = np.zeros(1, dtype=FLOW_DTYPE)
    k[0]["saddr"], k[0]["daddr"] = (struct.unpack("<I", socket.inet_aton(a))[0] for a in pkt[:2])
    k[0]["sport"], k[0]["dport"], k[0]["proto"] = socket.htons(pkt[2]), socket.htons(pkt[3]), pkt[4]
    return bool(flt.match_flows(k)[0])


COVER = {(f.text, p): covers(f, p) for f in FILTERS for p in PROBES}


class Checker:
    """Checks after every rule change: each probe (inside switch, and reversed on the outside
    switch) goes where the latest point() of a covering filter sent it or, while a call is
    under way, where it will send it. With exact keys, only the keys are checked outside."""

    def __init__(self, sw, keys=()):
        self.sw, self.keys = sw, list(keys)
        self.pointed: dict[str, list] = {}       # filter text -> targets, oldest point first
        self.earlier: set[str] = set()           # filters an earlier controller pointed
        self.during: dict = {}
        self.changes = 0
        for s in sw.values():
            s.on_change = self.check

    def want(self, p, pointed=None):
        pointed = self.pointed if pointed is None else pointed
        return next((t for f, t in reversed(pointed.items()) if COVER[(f, p)]), DEFAULT)

    def check(self):
        self.changes += 1
        for p in PROBES:
            ok = [self.want(p)] + ([self.during[p]] if p in self.during else [])
            assert self.sw["si"].where("h1", p) in ok, ("in", p, ok)
            if not self.keys:
                rev = (p[1], p[0], p[3], p[2], p[4])
                assert self.sw["so"].where("h2", rev) in ok, ("out", p, ok)
        for k in self.keys:
            ok = [self.pointed.get("proto=udp", DEFAULT), self.during.get("keys", DEFAULT)]
            assert self.sw["so"].where("h2", k) in ok, ("exact", k, ok)

    def point(self, st, flt, nfs):
        # pointing everything retires what this controller pointed before (an earlier
        # controller's sets it does not know stay, below)
        keep = (lambda f: f in self.earlier) if flt.everything else (lambda f: True)
        after = {f: t for f, t in self.pointed.items() if f != flt.text and keep(f)} | {flt.text: nfs}
        self.earlier.discard(flt.text)
        self.during = {p: self.want(p, after) for p in PROBES} | {"keys": nfs}
        st.point(flt, nfs, self.keys or None, prune=True)    # as the controller's moves do
        self.pointed, self.during = after, {}
        self.check()

    def forget(self, st, flt):
        after = {f: t for f, t in self.pointed.items() if f != flt.text}
        self.during = {p: self.want(p, after) for p in PROBES}
        st.forget(flt)
        self.pointed, self.during = after, {}
        self.check()


def band_min(sw):
    return min((p for s in sw.values() for p in s.band()), default=PRIO_TOP + 1)


def test_any_number_of_points_reuses_prios():
    rec, sw = sharp()
    st = Steering.over(rec, sw)
    for i in range(10_000):
        st.point(FILTERS[0], TARGETS[i % 2], prune=True)
    for s in sw.values():
        [prio] = s.band()
        assert PRIO_MIN <= prio <= PRIO_TOP
    assert sw["si"].where("h1", PROBES[0]) == TARGETS[1]
    assert sum(s.rules_calls for s in sw.values()) == 2        # read once, in the constructor


def test_latest_point_wins_at_every_step():
    """Overlapping filters in random order, across several renumberings: never a gap, never
    an older filter's rule above a newer one's, no rule left behind."""
    rec, sw = sharp()
    ck = Checker(sw)
    st = Steering.over(rec, sw)
    rnd = random.Random(7)
    renumbered = 0
    for _ in range(6000):
        flt = rnd.choice(FILTERS)
        before = band_min(sw)
        ck.point(st, flt, rnd.choice(TARGETS))
        renumbered += band_min(sw) > before
        if rnd.random() < 0.02:
            ck.forget(st, rnd.choice(FILTERS))
        for s in sw.values():
            band = s.band()
            # a set whose flows all go where the rules under it send them is taken out (the
            # Checker holds every probe to the latest point): never more sets than points
            assert len(band) <= len(ck.pointed) and len(set(band)) == len(band)
            assert all(PRIO_MIN <= p <= PRIO_TOP for p in band)
    assert renumbered >= 5 and ck.changes > 6000 * 4


def test_earlier_controllers_rules_are_kept_in_order_and_replaced():
    """A previous controller left two rule sets, the newer one at the floor: the first point()
    renumbers them, order kept, and pointing the same filter replaces the old set."""
    rec, sw = sharp()
    for n, h in (("si", "h1"), ("so", "h2")):
        sw[n].add_wild(Match(in_port=h, proto=17), Rule(output=["nf1"]), prio=PRIO_MIN + 5)   # older
        sw[n].add_wild(Match(in_port=h), Rule(output=["nf0", "nf1"]), prio=PRIO_MIN)    # newer: wins
    ck = Checker(sw)
    ck.pointed = {"proto=udp": ["nf1"], "all": ["nf0", "nf1"]}
    ck.earlier = set(ck.pointed)
    ck.check()
    st = Steering.over(rec, sw)
    ck.point(st, FILTERS[2], ["nf1"])
    assert sorted(sw["si"].band()) == [PRIO_TOP - 2, PRIO_TOP - 1, PRIO_TOP]
    # replaces the earlier controller's "all" set, and retires this controller's dport=9000
    ck.point(st, FILTERS[0], ["nf0"])
    # two sets, or one where "all" to nf0 repeats the default under it (the Checker holds the
    # flows to where the latest points send them either way)
    assert len(sw["si"].band()) in (1, 2) and len(sw["so"].band()) in (1, 2)
    ck.point(st, FILTERS[1], ["nf1"])            # replaces the earlier controller's proto=udp set
    # and "all" to nf0, older now, repeats the default: taken out (the outside switch keeps
    # what an earlier controller's reversed sets need)
    assert len(sw["si"].band()) == 1 and len(sw["so"].band()) <= 2
    assert sum(s.rules_calls for s in sw.values()) == 2


def test_exact_rules_on_the_outside_switch_do_not_leak():
    rec, sw = sharp()
    keys = [("10.0.2.2", "10.0.2.1", 9000, 20000 + k, 17) for k in range(5)]
    ck = Checker(sw, keys)
    st = Steering.over(rec, sw)
    for i in range(3000):
        ck.point(st, FILTERS[1], TARGETS[i % 3])
    # the five keys point at one shared rule, the point's; the earlier points' are gone
    assert len(sw["so"].exact) == 5 and len(sw["so"].rule) == 1 + 2
    assert len(sw["si"].band()) == 1 and len(sw["si"].rule) == 1 + 2
    ck.keys = []
    ck.forget(st, FILTERS[1])
    assert sw["so"].exact == {} and sw["si"].band() == []


def test_renumbering_gives_up_only_when_the_band_is_full(monkeypatch):
    monkeypatch.setattr(steer, "PRIO_TOP", 3)    # prios 0..3: room for four rule sets
    monkeypatch.setattr(steer, "PRIO_MIN", 0)
    rec, sw = sharp()
    ck = Checker(sw)
    st = Steering.over(rec, sw)
    for t in TARGETS:                            # renumbers on the way
        for f in FILTERS[:3]:
            ck.point(st, f, t)
    # four sets none of which sends where the ones under it would: none is taken out
    for f, t in zip(FILTERS, (["nf1"], ["nf0", "nf1"], ["nf1", "nf0"], ["nf0"])):
        ck.point(st, f, t)
    assert sorted(sw["si"].band()) == [0, 1, 2, 3]
    with pytest.raises(NfxError, match="no prio left"):
        st.point(FILTERS[0], ["nf1"], prune=True)
    ck.check()                                   # refused before anything changed
