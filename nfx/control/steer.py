"""Steering a filter's flows between NF instances on a testbed's switches, in one step or in
DiST's two phases (duplicate to source and destination, cut with an in-band control packet,
then destination only), and sending that control packet (IBC) into the flow's path."""
import dataclasses
import ipaddress
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import layout as L
from ..errors import BadInput, NfxError, NotFound
from ..flows import be_to_ip, reverse
from ..loader import netns
from ..filter import Filter
from .. import registry
from ..frames import ibc_frame
from .switch import Match, Rule, Switch
from .switch_rules import _proto, flow_key

# move rules sit in PRIO_MIN..PRIO_TOP, above the testbed's defaults (1000, 2000); the newest
# point() wins (lowest prio). At the floor the rules in force are renumbered back up to the top.
# Below PRIO_MIN lies SHarP's handover band (nfx/control/sharp_plane.py), above every move.
PRIO_TOP = 999
PRIO_MIN = 512
# the IBC is on its way once sent, but a rule changed before the switch has taken it would
# decide for the packets queued ahead of it too (they would reach the destination alone, before
# its cut: lost); ibc() returns once the switch has sent it on, or fails past this
IBC_PASS_S = 2.0


@dataclass
class _Wild:
    prio: int
    match: Match
    rule: Rule


class Steering:
    """The switches of one testbed, seen as: which instance gets a filter's flows."""

    def __init__(self, testbed: str):
        rec = registry.load(testbed)
        sw = {node: Switch.open(node, info["ns"], Path(info["pin"]))
              for node, info in rec["nodes"].items() if info["role"] == "switch"}
        self._setup(rec, sw)
        for s in self.sw.values():
            s.forget_unused_tokens()        # a controller that died mid-move left them

    @classmethod
    def over(cls, rec, switches: dict) -> "Steering":
        """On given switch objects (a testbed record's switches; tests pass in-memory ones)."""
        self = cls.__new__(cls)
        self._setup(rec, switches)
        return self

    def _setup(self, rec, switches: dict) -> None:
        self.rec = rec
        self.sw: dict[str, Switch] = dict(switches)
        self.host_port: dict[str, str] = {}     # switch -> its host-facing port
        self.host_of: dict[str, str] = {}       # switch -> host node
        for node in self.sw:
            for peer, ifname in rec["nodes"][node]["ifaces"].items():
                if rec["nodes"][peer]["role"] == "host":
                    self.host_port[node], self.host_of[node] = ifname, peer
        if not self.sw:
            raise NfxError(f"testbed {rec['name']} has no switches to steer (topology {rec['topology']})")
        self.lock = threading.Lock()
        self.active: dict[str, list[tuple[str, int]]] = {}    # filter text -> (switch, rule id)
        self.key_rules: dict[str, set[int]] = {}    # switch -> shared rules moves by key point at
        # every wildcard rule in the move band, read once: the ones an earlier controller left
        # (moves stay in force) and, from then on, the ones we add; nobody else writes the band
        self.wild: dict[str, dict[int, _Wild]] = {}
        # the testbed's defaults under the band (read once too: nobody changes them), for _prune
        self.defaults: dict[str, list[tuple[int, Match, Rule]]] = {}
        for name, s in self.sw.items():
            rules = [r for r in s.rules() if r.kind == "wild"]
            self.wild[name] = {r.id: _Wild(r.prio, r.match, r.rule) for r in rules if PRIO_MIN <= r.prio <= PRIO_TOP}
            self.defaults[name] = [(r.prio, r.match, r.rule) for r in rules if r.prio > PRIO_TOP]
        # (switch, shared rule) -> the exact keys pointing at it, for the shared rules point() makes
        self.exact_of: dict[tuple[str, int], set[bytes]] = {}
        # filter text -> the wildcards _prune took out of its set (switch, prio, match, rule): a
        # forget() of the rules that made them unneeded puts them back
        self.pruned: dict[str, list[tuple[str, int, Match, Rule]]] = {}
        # the filters whose rules _prune may take out: the moves' (prune=True); SHarP's handover
        # plane keeps its own (taking one out made its overlapping requests fail 1 run in 3)
        self.prunable: set[str] = set()
        self._ibc_socks: dict[str, socket.socket] = {}      # host node -> bound AF_PACKET socket
        self._ibc_lock = threading.Lock()
        self._ibc_send_lock = threading.Lock()

    def port_of(self, sw: str, nf: str) -> str:
        """The switch's port toward instance `nf`; for a joined testbed's lent instance
        (nf1@B), the switch's trunk (nfx/testbed/join.py)."""
        if registry.SITE_SEP not in nf:
            return self.rec["nodes"][sw]["ifaces"][nf]
        rec = registry.load(self.rec["name"])       # joined after this controller started, maybe
        registry.remote_instance(rec, nf)
        trunks = rec["join"].get("trunks") or {}
        if sw not in trunks:
            raise BadInput(f"{nf}: switch {sw} has no trunk to {rec['join']['peer']}")
        return trunks[sw]

    def side_of(self, sw: str) -> int:
        # the switch in front of the inside host (the one with a gateway) carries the inside side
        return L.SIDE_IN if "gen_if" in self.rec["nodes"][self.host_of[sw]] else L.SIDE_OUT

    def point(self, flt: Filter, nfs: list[str], outside_keys: list | None = None, token: int = 0,
              tagged: bool = False, keys: list | None = None, prune: bool = False) -> None:
        """Send the filter's flows to `nfs` (two instances: duplicate). On the inside switch
        the filter matches as written; on the outside switch return traffic is matched by
        `outside_keys` (exact, e.g. a NAT's public tuples) or, without them, by the filter
        reversed. Replaces the filter's previous rules without a gap: new rules go in above
        the old (and above every other filter's: the latest point wins), then the old go.
        With a token the new rules are armed (Switch) and the old stay, deciding until the
        token fires; the next point of the filter removes both. tagged (dup): each instance's
        copy carries its tag (Switch), the first instance's layout.dup_tag(0)."""
        if keys is not None:
            self._point_keys(nfs, keys, token, tagged)
            return
        if token and outside_keys is not None and not flt.everything:
            # an exact key has one rule: arming it would drop the rule in force meanwhile
            raise BadInput("armed rules are wildcards: a move by flow keys cannot be armed")
        with self.lock:
            prio = self._prio()
            # room for the new wildcards first: a switch that had none left after another took
            # its new rule would leave the flows steered on one side only
            for name, s in self.sw.items():
                exact = self.side_of(name) != L.SIDE_IN and outside_keys is not None and not flt.everything
                if not exact and s.wild_used() >= L.SW_MAX_WILD:
                    raise BadInput(f"switch {name}: all {L.SW_MAX_WILD} wildcard slots are in use",
                                   hint="fewer, wider filters; a filter moved back where its flows were "
                                        "frees its slot")
            new = []
            for name, s in self.sw.items():
                out = [self.port_of(name, nf) for nf in nfs]
                inside = self.side_of(name) == L.SIDE_IN
                if not inside and outside_keys is not None and not flt.everything:
                    # one shared rule for every key, pointed at in one batch: a rule of its own
                    # per key cost ~2.6 ms each (a free id is searched for), 2.7 s for 512 flows
                    rid = s.shared_rule(Rule(output=out, tagged=tagged))
                    keys = [k if isinstance(k, L.FlowKey) else flow_key(*k) for k in outside_keys]
                    s.point_exact(keys, rid)
                    mine = {bytes(k) for k in keys}
                    for (n, r), ks in self.exact_of.items():
                        if n == name:
                            ks -= mine                  # repointed: no longer that rule's
                    self.exact_of[(name, rid)] = mine
                    new.append((name, rid))
                    continue
                new.append((name, self.add_wild(name, filter_match(flt, self.host_port[name], reverse=not inside),
                                                 Rule(output=out, token=token, tagged=tagged), prio)))
            old = set(self.active.get(flt.text, []))
            # and any move rule with the same match that an earlier controller installed
            for name in self.sw:
                m = filter_match(flt, self.host_port[name], reverse=self.side_of(name) != L.SIDE_IN)
                old |= {(name, rid) for rid, w in self.wild[name].items() if w.match == m}
            if flt.everything and not token:
                # every flow is the new rules' now: an earlier partial move's rules (its exact
                # rules on the public tuples above all) would otherwise still decide for theirs
                for text in [t for t in self.active if t != flt.text]:
                    old |= set(self.active.pop(text))
                self.pruned.clear()
            self.pruned.pop(flt.text, None)         # this point is the filter's set now
            self.active[flt.text] = new
            if token:
                return
            for name, rid in old - set(new):
                self.remove_rule(name, rid)
            if prune:
                self.prunable.add(flt.text)
                self._prune(keep=set(new))

    def _prune(self, keep: set) -> None:
        """Take out the move rules no packet can reach any more: a wildcard whose addresses the
        newer wildcards of the same kind (port, ports, protocol) cover between them, and a shared
        exact rule no entry points at (its keys were repointed); and the older rules that send
        where the rules under them would. All still name an instance as a destination: nfx nf
        remove refuses an instance a rule names. The rules a point just made (`keep`) stay in
        force until a later point or forget(), repeat or not."""
        for name, s in self.sw.items():
            ws = self.wild[name]
            dead = {rid for rid, w in ws.items()
                    if covered(w.match, [x.match for x in ws.values() if x.prio < w.prio])}
            # a rule that sends where the rules under it would (the testbed's defaults count),
            # judged oldest first against the ones that stay
            below = {rid: (w.prio, w.match, w.rule) for rid, w in ws.items() if rid not in dead}
            below.update({-1 - i: d for i, d in enumerate(self.defaults.get(name, []))})
            for rid, w in sorted(ws.items(), key=lambda kv: -kv[1].prio):
                if rid in dead or (name, rid) in keep:
                    continue
                if redundant(w, [x for i, x in below.items() if x[0] > w.prio]):
                    dead.add(rid)
                    below.pop(rid, None)
            empty = {r for (n, r), ks in self.exact_of.items() if n == name and not ks}
            for text, ids in list(self.active.items()):
                if text not in self.prunable:
                    continue
                gone = [(n, rid) for n, rid in ids if n == name and (n, rid) not in keep
                        and (rid in dead or rid in empty)]
                if not gone:
                    continue
                for n, rid in gone:
                    w = ws.get(rid)
                    if w is not None:
                        self.pruned.setdefault(text, []).append((n, w.prio, w.match, w.rule))
                    self.remove_rule(n, rid)
                left = [x for x in ids if x not in gone]
                if left:
                    self.active[text] = left
                else:
                    del self.active[text]

    def _point_keys(self, nfs: list[str], keys: list, token: int, tagged: bool) -> None:
        """A spread testbed: the moved flows by their own keys (a NAT's inside and public tuples,
        an IDS's two directions), each at the switch whose host sends it (an exact entry matches
        on any port: at the other switch it would send the NF's own output back to it), so the
        flows other instances hold stay where the spread sends them. An exact rule is repointed
        in place: no gap, nothing to remove."""
        if token:
            raise BadInput("armed rules are wildcards: a move by flow keys cannot be armed")
        by_sw = self._keys_by_switch(keys)
        with self.lock:
            for name, s in self.sw.items():
                both = by_sw.get(name)
                if not both:
                    continue
                # one shared rule per switch and step, every key pointed at it in one batch update
                rid = s.shared_rule(Rule(output=[self.port_of(name, nf) for nf in nfs], tagged=tagged))
                s.point_exact(both, rid)
                mine = self.key_rules.setdefault(name, set())
                mine.add(rid)
                live = s.exact_rule_ids()
                for old in [r for r in mine if r not in live]:     # no key left on it: its id goes back
                    mine.discard(old)
                    self.remove_rule(name, old)

    def _keys_by_switch(self, keys: list) -> dict[str, list]:
        """Each key at the switch whose host's network holds its source address; a key from no
        host's network (an IBC's tuple made from the filter, ibc_synthetic) at every switch: only
        the controller's IBC carries it, entering at a host port."""
        nets = {sw: ipaddress.IPv4Interface(self.rec["nodes"][h]["addr"]).network for sw, h in self.host_of.items()}
        out: dict[str, list] = {}
        for k in keys:
            src = ipaddress.IPv4Address(be_to_ip(k.saddr))
            at = [sw for sw, net in nets.items() if src in net] or list(nets)
            for sw in at:
                out.setdefault(sw, []).append(k)
        return out

    def fired(self, token: int) -> list[int | None]:
        """When each switch took the trigger with `token` (CLOCK_MONOTONIC ns, None: not yet)."""
        return [s.fired(token) for s in self.sw.values()]

    def forget_token(self, token: int) -> None:
        for s in self.sw.values():
            s.forget_token(token)

    def _prio(self) -> int:
        """A prio above every move rule in force (and every pruned one's place)."""
        top = min([w.prio for ws in self.wild.values() for w in ws.values()] +
                  [e[1] for es in self.pruned.values() for e in es], default=PRIO_TOP + 1)
        if top <= PRIO_MIN:
            top = self._renumber()
        return top - 1

    def _renumber(self) -> int:
        """Move the rules in force back up to the top of the band, oldest first, order kept:
        each rule set is copied to its new prio, then its old copy goes. Nothing lies between a
        set's old and new prio (older sets are already above it, newer ones below), and the
        copy does what the original does, so no packet changes course. Returns the new top."""
        # the pruned sets keep their places in the order (forget() may put them back)
        prios = sorted({w.prio for ws in self.wild.values() for w in ws.values()} |
                       {e[1] for es in self.pruned.values() for e in es}, reverse=True)
        if len(prios) > PRIO_TOP - PRIO_MIN:
            raise NfxError(f"{len(prios)} steering rule sets in force: no prio left for another")
        moved: dict[tuple[str, int], tuple[str, int]] = {}
        try:
            for to, at in zip(range(PRIO_TOP, PRIO_MIN - 1, -1), prios):
                if to == at:
                    continue
                for name, ws in self.wild.items():
                    group = [(rid, w) for rid, w in ws.items() if w.prio == at]    # in slot order
                    for rid, w in group:
                        moved[(name, rid)] = (name, self.add_wild(name, w.match, w.rule, to))
                    for rid, _ in group:
                        self.remove_rule(name, rid)
        finally:
            for text, ids in self.active.items():
                self.active[text] = [moved.get(x, x) for x in ids]
            new_prio = dict(zip(prios, range(PRIO_TOP, PRIO_MIN - 1, -1)))
            for text, es in self.pruned.items():
                self.pruned[text] = [(n, new_prio.get(p, p), m, r) for n, p, m, r in es]
        return PRIO_TOP - len(prios) + 1

    def add_wild(self, name: str, m: Match, rule: Rule, prio: int) -> int:
        rid = self.sw[name].add_wild(m, rule, prio=prio)
        self.wild[name][rid] = _Wild(prio, m, rule)
        return rid

    def remove_rule(self, name: str, rid: int) -> None:
        self.wild[name].pop(rid, None)
        self.exact_of.pop((name, rid), None)
        # an exact rule whose key was re-added has been repointed, and its old id freed
        try:
            self.sw[name].remove(rid)
        except (BadInput, NotFound):
            pass

    def ibc(self, side: int, key: L.FlowKey, epoch: int) -> None:
        """Send the IBC from the host in front of `side`, so it enters the switch on the same
        port, in the same queue, as the flow's own packets: the cut is the same in both copies.
        Returns once the switch has sent it on (DiST's switch takes the packet-out before the
        rule update behind it; here the packet may wait in the port's queue, behind the flow's
        own, while the controller already writes the next rule)."""
        self.ibcs([(side, key)], epoch)

    def ibcs(self, cuts: list, epoch: int) -> None:
        """ibc() for every (side, key) of `cuts`, all sent before any is waited for: the
        destination holds a side's packets from that side's IBC, and the source cuts only when
        both are in, so one IBC waiting for the other to pass made every held packet wait too."""
        sends = []
        for side, key in cuts:
            sw = next(n for n in self.sw if self.side_of(n) == side)
            host = self.host_of[sw]
            key = self.from_host(sw, key)
            sends.append((sw, host, ibc_frame(key, bytes.fromhex(self.rec["nodes"][host]["mac"].replace(":", "")), epoch)))
        # one sender at a time: a switch expects one epoch, and counts every IBC it sends on
        with self._ibc_send_lock:
            expect = {}
            for sw, _, _ in sends:
                if sw not in expect:
                    # its host port drops IBCs (a host could forge one) but this epoch's, until the
                    # next move's: only its own move acts on one (the NF's gate checks the epoch)
                    self.sw[sw].expect_ibc(epoch)
                    expect[sw] = self.sw[sw].ibcs_passed()
                expect[sw] += 1
            for _, host, frame in sends:
                s = self.host_socket(host)
                try:
                    s.send(frame)
                except OSError:
                    # closed meanwhile, or the interface was recreated (the binding holds the old ifindex)
                    self._drop_ibc_sock(host, s)
                    self.host_socket(host).send(frame)
            for sw, passed in expect.items():
                self._wait_passed(sw, passed)

    def _wait_passed(self, sw: str, passed: int) -> None:
        """Until switch `sw` has sent `passed` IBCs on in all."""
        end = time.monotonic() + IBC_PASS_S
        pause = 20e-6
        while self.sw[sw].ibcs_passed() < passed:
            if time.monotonic() > end:
                raise NfxError(f"the IBC did not pass switch {sw} within {IBC_PASS_S:g} s: no rule sends "
                               f"its flow on (its r_sw_miss / r_forged counters say which)")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    def from_host(self, sw: str, key: L.FlowKey) -> L.FlowKey:
        """The IBC's tuple as the host in front of `sw` sends it. An NF that rewrites no address
        (the IDS) holds both directions of a connection as flows, and the cut's tuple may be
        either (movespec.ibc_keys): one whose source is the other host's would miss the move's
        exact rules at this switch (each key sits at the switch whose host's network holds its
        source: _keys_by_switch), so its reverse (marked and steered too) goes instead. A tuple
        from neither network (ibc_synthetic) stays as it is."""
        net = ipaddress.IPv4Interface(self.rec["nodes"][self.host_of[sw]]["addr"]).network
        if ipaddress.IPv4Address(be_to_ip(key.saddr)) in net:
            return key
        back = reverse(key)
        return back if ipaddress.IPv4Address(be_to_ip(back.saddr)) in net else key

    def host_socket(self, host: str) -> socket.socket:
        # kept open: closing a packet socket waits out an RCU grace period (7-19 ms). It belongs
        # to the netns it was made in, so any thread can send on it afterwards.
        with self._ibc_lock:
            s = self._ibc_socks.get(host)
            if s is None:
                info = self.rec["nodes"][host]
                with netns.enter(info["ns"]):
                    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)    # protocol 0: receives nothing
                    try:
                        s.bind((info["ifname"], 0))
                    except BaseException:
                        s.close()
                        raise
                self._ibc_socks[host] = s
            return s

    def _drop_ibc_sock(self, host: str, s: socket.socket) -> None:
        with self._ibc_lock:
            if self._ibc_socks.get(host) is s:
                del self._ibc_socks[host]
        s.close()

    def forget(self, flt: Filter) -> None:
        """Take the filter's rules out: its flows go where the older sets send them. The sets
        _prune took out because of them come back (the ones still unneeded go again)."""
        with self.lock:
            # back first, under the filter's own rules (older prios): no packet changes course
            # until those go
            self.pruned.pop(flt.text, None)
            back, self.pruned = self.pruned, {}
            for text, entries in back.items():
                for name, prio, m, rule in entries:
                    self.active.setdefault(text, []).append((name, self.add_wild(name, m, rule, prio)))
            for name, rid in self.active.pop(flt.text, []):
                self.remove_rule(name, rid)
            self._prune(keep=set())

    def close(self) -> None:
        """Close the IBC sockets and the switches' map fds (the rules stay in force). Safe to
        call twice; the object is not used afterwards."""
        with self._ibc_lock:
            socks, self._ibc_socks = list(self._ibc_socks.values()), {}
        for s in socks:
            s.close()
        for s in self.sw.values():
            s.close()


def covered(m: Match, newer: list[Match]) -> bool:
    """Whether the newer matches (of the same port, ports and protocol, and one of the two
    address prefixes) cover every address of m's other prefix between them."""
    def net(p):
        return ipaddress.IPv4Network(p or "0.0.0.0/0", strict=False)

    same = [x for x in newer if (x.in_port, x.sport, x.dport, str(x.proto)) == (m.in_port, m.sport, m.dport, str(m.proto))]
    for mine, other in (("src", "dst"), ("dst", "src")):
        cover = [net(getattr(x, mine)) for x in same if net(getattr(x, other)) == net(getattr(m, other))]
        if prefix_covered(net(getattr(m, mine)), cover):
            return True
    return False


def prefix_covered(net: ipaddress.IPv4Network, cover: list) -> bool:
    """Whether the prefixes in `cover` hold every address of `net` between them."""
    left = [net]
    for c in cover:
        nxt = []
        for r in left:
            if r.subnet_of(c):
                continue
            nxt.extend(r.address_exclude(c) if c.subnet_of(r) else [r])
        left = nxt
        if not left:
            return True
    return False


def same_rule(a: Rule, b: Rule) -> bool:
    """Whether two rules do the same to a packet (an armed one does not yet)."""
    return not a.token and not b.token and dataclasses.replace(a, token=0) == dataclasses.replace(b, token=0)


def redundant(w: "_Wild", older: list[tuple[int, Match, Rule]]) -> bool:
    """Whether the rules under w (prio, match, rule; any order) already send all of w's flows
    where w does: the first of them, in prio order, that matches every flow w matches has w's
    rule, and every one before it that matches some of them has it too."""
    def net(p):
        return ipaddress.IPv4Network(p or "0.0.0.0/0", strict=False)

    def dims(x: Match):
        return (x.in_port or None, x.sport or 0, x.dport or 0, _proto(x.proto) if x.proto else 0)

    m = w.match
    md = dims(m)
    for _, x, rule in sorted(older, key=lambda t: t[0]):
        xd = dims(x)
        if any(a and b and a != b for a, b in zip(xd, md)):
            continue                     # no flow of w's
        if not (net(m.src).overlaps(net(x.src)) and net(m.dst).overlaps(net(x.dst))):
            continue
        whole = all(a in (None, 0) or a == b for a, b in zip(xd, md)) and \
            net(m.src).subnet_of(net(x.src)) and net(m.dst).subnet_of(net(x.dst))
        if not same_rule(rule, w.rule):
            return False                 # some of w's flows would go elsewhere without w
        if whole:
            return True
    return False


def filter_match(flt: Filter, in_port: str, reverse: bool) -> Match:
    def prefix(p):
        net, mask = p
        if not mask:
            return None
        bits = bin(struct.unpack(">I", struct.pack("<I", mask))[0]).count("1")
        return f"{be_to_ip(net)}/{bits}"

    def port(r):
        return r[0] if r[0] == r[1] else 0

    src, dst = prefix(flt.src), prefix(flt.dst)
    sp, dpt = port(flt.sport), port(flt.dport)
    if reverse:
        src, dst, sp, dpt = dst, src, dpt, sp
    return Match(in_port=in_port, src=src, dst=dst, sport=sp, dport=dpt, proto=flt.proto)
