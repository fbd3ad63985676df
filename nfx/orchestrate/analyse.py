"""The analyser: from the monitor's samples and a policy, which instances are overloaded or
underloaded and which one holds too large a share of the testbed (imbalance), each raised only
after it held `samples` samples in a row and cleared only after as many samples past the
`clear` margin on the other side. Pure: feed it Samples (real or made up), read its Events.

    overload   pps >  overload  * capacity   clears below (overload  - clear) * capacity
    underload  pps <  underload * capacity   clears above (underload + clear) * capacity
    imbalance  share >= imbalance            clears below imbalance - clear
               (an instance's share of the testbed's flows, or pps, judged once a round: when
               every instance has sent a sample since the last judgement, and only while the
               testbed holds at least imbalance_min of them)
"""
import dataclasses
from dataclasses import dataclass

from .monitor import Sample
from .policy import Policy

KINDS = ("overload", "underload", "imbalance")


@dataclass
class Event:
    kind: str                      # overload | underload | imbalance
    instance: str
    value: float                   # what raised it: pps (overload, underload) or share (imbalance)
    threshold: float               # the raising threshold, in the value's unit
    clear_threshold: float         # the other side it must pass to clear
    since: float                   # t of the first sample of the run that raised it
    raised_at: float               # t of the sample that raised it
    cleared_at: float | None = None   # t of the sample that cleared it; None while it holds
    peak: float = 0.0              # the furthest value since it began

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Condition:
    """One condition on one instance: `over(value)` raises it, `clear(value)` clears it, each
    only after `n` samples in a row. A value of None (nothing to judge) counts as clear."""

    def __init__(self, kind: str, instance: str, threshold: float, clear_threshold: float, n: int, above: bool):
        self.kind, self.instance = kind, instance
        self.threshold, self.clear_threshold = threshold, clear_threshold
        self.n, self.above = n, above
        self.run = 0                   # samples in a row on the other side of the current state
        self.run_since = 0.0
        self.run_peak = 0.0
        self.event: Event | None = None

    def _over(self, v) -> bool:
        if v is None:
            return False
        return v > self.threshold if self.kind == "overload" else \
            v >= self.threshold if self.kind == "imbalance" else v < self.threshold

    def _clear(self, v) -> bool:
        if v is None:
            return True
        return v > self.clear_threshold if self.kind == "underload" else v < self.clear_threshold

    def update(self, t: float, v: float | None) -> Event | None:
        """The Event when this sample raises or clears the condition, else None."""
        if self.event is None:
            if not self._over(v):
                self.run = 0
                return None
            self.run += 1
            if self.run == 1:
                self.run_since, self.run_peak = t, v
            self.run_peak = max(self.run_peak, v) if self.above else min(self.run_peak, v)
            if self.run < self.n:
                return None
            self.run = 0
            self.event = Event(self.kind, self.instance, v, self.threshold, self.clear_threshold,
                               since=self.run_since, raised_at=t, peak=self.run_peak)
            return self.event
        ev = self.event
        if v is not None:
            ev.peak = max(ev.peak, v) if self.above else min(ev.peak, v)
        if not self._clear(v):
            self.run = 0
            return None
        self.run += 1
        if self.run < self.n:
            return None
        self.run = 0
        ev.cleared_at = t
        self.event = None
        return ev


class Analyser:
    """Feed it samples in arrival order; it answers with the Events each one raised or cleared
    (check .active). `instances`: the instances a round of imbalance waits for (default: every
    one it has seen a sample of)."""

    def __init__(self, policy: Policy, instances: list[str] | None = None):
        self.policy = policy
        self.instances: list[str] = list(instances or [])
        self.fixed = bool(instances)
        self.conditions: dict[tuple[str, str], Condition] = {}
        self.latest: dict[str, Sample] = {}
        self.fresh: set[str] = set()         # instances with a sample since the last round
        self.events: list[Event] = []        # every event raised, in order (cleared ones too)
        self.rounds = 0

    def _cond(self, kind: str, instance: str) -> Condition:
        c = self.conditions.get((kind, instance))
        if c is None:
            p, cap = self.policy, self.policy.instance.capacity_pps
            t, clr, n = p.thresholds, p.hysteresis.clear, p.hysteresis.samples
            c = {"overload": lambda: Condition(kind, instance, t.overload * cap, (t.overload - clr) * cap, n, True),
                 "underload": lambda: Condition(kind, instance, t.underload * cap, (t.underload + clr) * cap, n, False),
                 "imbalance": lambda: Condition(kind, instance, t.imbalance, t.imbalance - clr, n, True)}[kind]()
            self.conditions[(kind, instance)] = c
        return c

    def feed(self, s: Sample) -> list[Event]:
        changed = []
        if s.instance not in self.instances:
            if self.fixed:
                return []                    # not one of ours
            self.instances.append(s.instance)
        for kind in ("overload", "underload"):
            ev = self._cond(kind, s.instance).update(s.t, s.pps)
            if ev is not None:
                changed.append(ev)
        self.latest[s.instance] = s
        self.fresh.add(s.instance)
        if self.fresh >= set(self.instances):
            changed += self._judge_balance(s.t)
            self.fresh.clear()
        for ev in changed:
            if ev.active:
                self.events.append(ev)
        return changed

    def watch(self, instance: str) -> None:
        """Judge one more instance (the loop added it)."""
        if instance not in self.instances:
            self.instances.append(instance)

    def forget(self, instance: str, t: float) -> list[Event]:
        """Stop judging an instance (the loop removed it at `t`); its active events end then
        and are returned."""
        if instance in self.instances:
            self.instances.remove(instance)
        self.latest.pop(instance, None)
        self.fresh.discard(instance)
        ended = []
        for key in [k for k in self.conditions if k[1] == instance]:
            ev = self.conditions.pop(key).event
            if ev is not None:
                ev.cleared_at = t
                ended.append(ev)
        return ended

    def shares(self) -> dict[str, float] | None:
        """Each instance's share of the testbed's flows (or pps), from its latest sample; None
        when it cannot be judged (one instance, a count missing, or less than imbalance_min)."""
        t = self.policy.thresholds
        if len(self.instances) < 2 or any(n not in self.latest for n in self.instances):
            return None
        vals = {}
        for n in self.instances:
            v = self.latest[n].flows if t.imbalance_basis == "flows" else self.latest[n].pps
            if v is None:
                return None
            vals[n] = max(0.0, float(v))
        total = sum(vals.values())
        if total <= 0 or total < t.imbalance_min:
            return None
        return {n: v / total for n, v in vals.items()}

    def _judge_balance(self, t: float) -> list[Event]:
        self.rounds += 1
        sh = self.shares()
        out = []
        for n in self.instances:
            ev = self._cond("imbalance", n).update(t, None if sh is None else sh[n])
            if ev is not None:
                out.append(ev)
        return out

    def active(self) -> list[Event]:
        return [c.event for c in self.conditions.values() if c.event is not None]

    def summary(self) -> dict:
        return {"events": [e.as_dict() for e in self.events], "active": [e.as_dict() for e in self.active()],
                "rounds": self.rounds}
