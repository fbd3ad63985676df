"""The read side of the switch's maps (bpf/switch.bpf.c; the switch and what its maps mean:
switch.py): its rules decoded back into RuleInfo (wildcard slots, exact entries, orphans), rule
counters and last hits, fired tokens, port roles, the stamper's counts, the expected tests, the
verdict and reason counters and the controller ring's reader. SwitchRead writes no map:
Switch (switch.py), the maps' one writer, inherits it and finds its rules and slots through it."""
import socket

from .. import layout as L
from ..errors import NotFound
from ..loader import netns
from ..loader.maps import stats_dict
from ..loader.spec import MapSet
from .spread import Spread, decode as decode_spread, group_hits
from .switch_ring import CtrlReader, Port
from .switch_rules import Match, Rule, RuleInfo, _key_tuple, _prefix_str


class SwitchRead:
    """Reads a switch's maps; Switch sets what it reads by (name, ns, maps, ring_fd, _names)."""
    name: str
    ns: str | None
    maps: MapSet                 # switch.py's SWITCH_MAPS
    ring_fd: int
    _names: dict[int, str]       # ifindex -> interface name, as looked up

    # ---- ports ----
    # a trunk faces the joined site's NFs (through its switch): an NF port that also takes tags
    ROLES = {"host": L.SW_PORT_HOST, "nf": L.SW_PORT_NF, "trunk": L.SW_PORT_NF | L.SW_PORT_TRUNK}

    def ifindex(self, port: Port) -> int:
        if isinstance(port, int):
            return port
        return netns.ifindex(port, self.ns)

    def port_name(self, idx: int) -> Port:
        if idx not in self._names:
            try:
                with netns.enter(self.ns):
                    self._names[idx] = socket.if_indextoname(idx)
            except (OSError, NotFound):
                return idx
        return self._names[idx]

    def port_roles(self) -> dict[Port, str]:
        names = {v: k for k, v in self.ROLES.items()}
        n, keys, vals = self.maps.sw_ports.export()
        return {self.port_name(keys[i]): names.get(vals[i], str(vals[i])) for i in range(n)}

    def _cfg(self) -> L.SwCfg:
        return self.maps.sw_cfg.get(L.u32(0)) or L.SwCfg()

    def ibcs_passed(self) -> int:
        """The controller's IBCs this switch has sent on by their rules, summed over CPUs."""
        return self.maps.sw_reasons.sum_percpu(L.u32(L.SwReason.IBC))

    # ---- the stamper ----
    def stamping(self) -> bool:
        return bool(self._cfg().stamp)

    def stamp_counts(self) -> dict[tuple, int]:
        """The stamper's count per flow (src, dst, sport, dport, proto), one direction each."""
        n, keys, vals = self.maps.sw_stamps.export()
        return {_key_tuple(keys[i]): vals[i] for i in range(n)}

    # ---- SHarP's test packets ----
    def expected_tests(self) -> list[int]:
        n, keys, _ = self.maps.sw_hsl_epochs.export()
        return sorted(keys[i] for i in range(n))

    # ---- rules ----
    def _used_rules(self) -> dict[int, L.SwRule]:
        n, keys, vals = self.maps.sw_rules.export()
        return {keys[i]: vals[i] for i in range(n) if vals[i].used}

    FREE_SCAN = 64          # rule slots read at once looking for a free one (then 4x as many)

    def _free_rule_id(self, ids: range) -> int | None:
        """The lowest id of `ids` whose rule slot is unused, read a chunk at a time from the
        range's start: ids go lowest first, so the first chunk mostly has one. Reading the whole
        table (4096 slots) for each new rule cost ~1 ms a rule, 2 per point of a move."""
        at, step = ids.start, self.FREE_SCAN
        while at < ids.stop:
            n, keys, vals = self.maps.sw_rules.read_from(at, min(step, ids.stop - at))
            for i in range(n):
                if not vals[i].used:
                    return int(keys[i])
            if n == 0:
                return None
            at, step = at + n, step * 4
        return None

    def _rule_in_use(self, rule_id: int) -> L.SwRule:
        """Rule `rule_id`'s slot; NotFound if it is not a rule in use."""
        r = self.maps.sw_rules.get(L.u32(rule_id)) if 0 < rule_id < L.SW_MAX_RULES else None
        if r is None or not r.used:
            raise NotFound(f"switch {self.name}: no rule {rule_id}")
        return r

    def _decode(self, r: L.SwRule, rid: int) -> Rule:
        out = [self.port_name(r.ports[i]) for i in range(min(r.nports, L.SW_MAX_PORTS))] \
            if r.actions & L.SW_OUTPUT else []
        spread, by = [], Spread()
        if r.actions & L.SW_SPREAD:
            by, idx = decode_spread(self.maps.sw_spread.get(L.u32(rid)) or L.SwSpread())
            spread, out = [self.port_name(i) for i in idx], out[1:]
        return Rule(output=out, set_tos=r.tos if r.actions & L.SW_SET_TOS else None,
                    clear_tos=bool(r.actions & L.SW_CLEAR_TOS), to_ctrl=bool(r.actions & L.SW_TO_CTRL),
                    drop=bool(r.actions & L.SW_DROP), token=r.token, tagged=bool(r.actions & L.SW_TAG),
                    spread=spread, spread_by=by)

    def spread_hits(self, rule_id: int) -> list[int]:
        """Packets spread rule `rule_id` sent to each port of its group, summed over CPUs."""
        return group_hits(self.maps, rule_id)

    def exact_rule_ids(self) -> set[int]:
        """The rule ids some exact entry points at."""
        n, _, vals = self.maps.sw_exact.export()
        return {int(vals[i]) for i in range(n)}

    def wild_used(self) -> int:
        """Wildcard slots in use."""
        return len(self._wild_list())

    def _wild_list(self) -> list[L.SwWild]:
        n, _, vals = self.maps.sw_wild.export()
        return [L.SwWild.from_buffer_copy(vals[i]) for i in range(n) if vals[i].used]

    def rules(self) -> list[RuleInfo]:
        used = self._used_rules()
        out = []
        for w in self._wild_list():
            m = Match(in_port=self.port_name(w.in_port) if w.in_port else None,
                      src=_prefix_str(w.saddr, w.smask), dst=_prefix_str(w.daddr, w.dmask),
                      sport=socket.ntohs(w.sport), dport=socket.ntohs(w.dport), proto=w.proto)
            if w.rule in used:
                out.append(RuleInfo(w.rule, "wild", self._decode(used.pop(w.rule), w.rule), m, w.prio))
        n, keys, vals = self.maps.sw_exact.export()
        for i in range(n):
            rid = vals[i]
            if rid in used:
                out.append(RuleInfo(rid, "exact", self._decode(used.pop(rid), rid), _key_tuple(keys[i])))
        # written but not (or no longer) reachable: shown so nothing is hidden
        out += [RuleInfo(rid, "orphan", self._decode(r, rid), None) for rid, r in sorted(used.items())]
        return out

    # ---- armed rules ----
    def fired(self, token: int) -> int | None:
        """When a trigger with `token` arrived (CLOCK_MONOTONIC ns), or None."""
        v = self.maps.sw_fired.get(L.u64(token))
        return None if v is None else v.value

    # ---- counters ----
    def counters(self) -> dict[int, tuple[int, int]]:
        """{rule id: (packets, bytes)} for every rule in use, summed over CPUs."""
        used = self._used_rules()
        n, keys, vals = self.maps.sw_counters.export()
        out = {}
        for i in range(n):
            rid = keys[i]
            if rid in used:
                out[rid] = (sum(c.pkts for c in vals[i]), sum(c.bytes for c in vals[i]))
        return out

    def last_hit_ns(self, rule_id: int) -> int | None:
        """When rule `rule_id` last matched a packet (CLOCK_MONOTONIC ns, as time.monotonic_ns()),
        or None if it has not since it was added. The latest stamp over CPUs."""
        self._rule_in_use(rule_id)
        v = self.maps.sw_counters.get(L.u32(rule_id))
        last = max((c.last_ns for c in v), default=0) if v is not None else 0
        return last or None

    def stats(self) -> dict[str, int]:
        """Verdict and reason counters summed over CPUs, by name; zeros left out. The switch's
        own reasons (sw_reasons) are among them as r_sw_<reason>."""
        out = stats_dict(self.maps.nfx_stats)
        n, keys, vals = self.maps.sw_reasons.export()
        names = {r.value: f"r_sw_{r.name.lower()}" for r in L.SwReason}
        for i in range(n):
            if sum(vals[i]):
                out[names.get(keys[i], f"sw_reason_{keys[i]}")] = sum(vals[i])
        return out

    def ctrl_reader(self) -> "CtrlReader":
        return CtrlReader(self.ring_fd, self.port_name)
