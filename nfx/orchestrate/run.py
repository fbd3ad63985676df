"""The orchestration loop (`nfx orchestrate run`): the monitor samples every instance, the
analyser raises and clears conditions, and every planner interval, unless the last plan's
actions still run, the loop reads what each instance holds (inventory.py), plans
(plan.py) and hands the actions over (actions.py). The instances the testbed had when the loop
began are never removed by it; the ones it adds get the names nfx nf add gives by default
(nfx/testbed/slots.py free_names).

A lost instance (its agent stopped answering) leaves the plan: if the controller has a
secondary for it (nfx cluster up --pairs), its failure detector promotes that one, and the
loop notes the recovery when the controller's status names it; the flows then count at the
secondary. Without a secondary the loop notes the loss; it does not restart instances.

A maintenance drain (request_drain; `--drain` of orchestrate run) takes an instance out of
service, upgrades it and brings its flows back (drain.py); while it runs, the loop plans its
steps alone."""
import time

from .. import registry
from ..errors import NfxError
from ..paths import decision_log
from ..procs import controller
from ..testbed.drops import testbed_drops
from ..testbed.slots import PEER_SLOTS, free_names
from .actions import Actions
from .analyse import Analyser
from .drain import Drain
from .inventory import Inventory
from .monitor import Lost, Monitor, Sample
from .plan import CostModel, Planner, views_from
from .policy import Policy
from .slots import SlotBook
from .timeline import Timeline


def sharing_clusters(rec) -> dict[str, str]:
    """Instance -> its cluster, where the clusters share (nfx cluster up): what cluster-first
    prefers. Without sharing a move carries everything wherever it goes: none."""
    if not rec.get("sharing"):
        return {}
    return {m: c for c, ms in rec.clusters_in_force().items() for m in ms}


class Loop:
    def __init__(self, testbed: str, policy: Policy, run_stats: bool = False, on_line=None):
        self.testbed, self.policy = testbed, policy
        rec = registry.load(testbed)
        nfs = [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]
        if not nfs:
            raise NfxError(f"testbed {testbed} has no NF instances")
        self.kind = rec["nodes"][nfs[0]].get("kind")
        self.fixed = set(nfs)                    # the loop never takes these out
        self.run_stats = run_stats
        self.on_line = on_line or (lambda msg: None)
        self.timeline = Timeline(policy.instance.capacity_pps, policy.interval_s, decision_log(testbed))
        self.cost = CostModel()
        self.planner = Planner(policy, self.cost)
        self.lost: dict[str, str] = {}            # instance -> why it was lost
        self.recovered: dict[str, str] = {}       # lost instance -> the secondary promoted for it
        self.removed_drops = 0                    # tx_dropped of the instances the loop removed
        self.status: dict | None = None           # the controller's, as last read
        self.drain: Drain | None = None           # the maintenance drain under way
        self.drain_wanted: list[str] = []         # drains asked for, in turn
        self.last_notes: list[str] = []

    def run(self, duration: float | None = None, stop=None) -> dict:
        """Until `duration` s passed or stop() is true; the last plan's actions are let finish.
        Returns the timeline (Timeline.as_dict without traffic)."""
        mon = Monitor(self.testbed, self.policy, run_stats=self.run_stats).start()
        an = Analyser(self.policy)
        inv = Inventory(self.testbed, self.kind)
        acts = Actions(self.testbed, self.policy, self.timeline, self.cost,
                       on_added=lambda n: self._added(mon, an, n), before_remove=lambda n: self._removing(mon, an, n),
                       on_removed=lambda n: self._removed(inv, n),
                       before_upgrade=lambda n: self._upgrading(mon, an, inv, n),
                       after_upgrade=lambda n: self._resample(mon, an, n), on_done=self._action_done)
        self.timeline.in_service(list(mon.instances))
        interval = self.policy.planner.interval_ms / 1000
        next_plan = time.monotonic() + interval
        end = time.monotonic() + duration if duration else None
        try:
            while end is None or time.monotonic() < end:
                if stop is not None and stop():
                    break
                item = mon.next(timeout=0.05)
                if isinstance(item, Sample):
                    self.timeline.sample(item)
                    for ev in an.feed(item):
                        self.timeline.event(ev)
                        self.on_line(f"{'raised' if ev.active else 'cleared'} {ev.kind} on {ev.instance}")
                elif isinstance(item, Lost):
                    self._lost(mon, an, item)
                if time.monotonic() >= next_plan:
                    next_plan = time.monotonic() + interval
                    if not acts.running:
                        self._plan_round(mon, an, inv, acts)
                    if self.lost:
                        self._check_recovery()
        finally:
            acts.wait(120)
            mon.stop()
            inv.close()
            self.timeline.close()
        return self.timeline.as_dict()

    # ---- a round ----
    def _plan_round(self, mon: Monitor, an: Analyser, inv: Inventory, acts: Actions) -> None:
        live = [n for n in mon.instances if n not in self.lost]
        latest = an.latest
        if not live or any(n not in latest for n in live):
            return                               # a sample of each before judging
        pps = {n: latest[n].pps for n in live}
        try:
            flows = inv.read(live, pps)
        except NfxError as e:
            self.timeline.note("inventory-failed", error=str(e))
            return
        views = views_from(flows, pps, self.policy.planner.block_bits, self.fixed)
        rec = registry.load(self.testbed)
        spare = free_names(rec, PEER_SLOTS)       # the names nfx nf add would give, in order
        slots = self._slots()
        kind = "balance"
        if self.drain is None and self.drain_wanted:
            self._start_drain(self.drain_wanted.pop(0), live)
        if self.drain is not None:
            # a drain plans alone: nothing else touches its instances meanwhile
            self.planner.begin(slots, sharing_clusters(rec))
            kind, actions = self.drain.plan(self.planner, views, spare, acts.busy())
            self._held(self.planner.notes + ([self.drain.note] if self.drain.note else []))
            if self.drain.done:
                self.timeline.note("drain-done", instance=self.drain.instance)
                self.on_line(f"drain of {self.drain.instance} done: upgraded, its flows back")
                self.drain = None
        else:
            actions = self.planner.plan(views, an.active(), spare, busy=acts.busy(), slots=slots,
                                        clusters=sharing_clusters(rec))
            self._held(self.planner.notes)
        if actions:
            self.timeline.plan(views, actions, inv.read_s, slots_free=None if slots is None else slots.free,
                               kind=kind)
            for a in actions:
                self.on_line(f"plan: {a.kind} {a.instance}" + (f" -> {a.dst} {a.filter} ({a.flows} flows, "
                                                               f"{a.pps:,.0f} pps)" if a.kind == "move" else "")
                             + f": {a.reason}")
            acts.start(actions)

    # ---- maintenance drain ----
    def request_drain(self, instance: str) -> None:
        """Take `instance` out of service and back (drain.py), from the next planning round on
        (any thread may ask; one drain at a time, the others wait their turn)."""
        self.drain_wanted.append(instance)

    def _start_drain(self, instance: str, live: list[str]) -> None:
        if instance not in live:
            self.timeline.note("drain-refused", instance=instance, reason=f"{instance} is not in service")
            self.on_line(f"drain of {instance} refused: not in service")
            return
        self.drain = Drain(instance)
        self.timeline.note("drain-start", instance=instance)
        self.on_line(f"drain of {instance}: its flows off, a hot upgrade, its flows back")

    def _action_done(self, action, record: dict) -> None:
        if action.kind == "upgrade" and self.drain is not None and action.instance == self.drain.instance:
            self.drain.upgraded(record.get("ok", False))
            if record.get("ok"):
                self.on_line(f"upgraded {action.instance}: program {record.get('old_prog_id')} -> "
                             f"{record.get('new_prog_id')}")

    def _upgrading(self, mon: Monitor, an: Analyser, inv: Inventory, name: str) -> None:
        """Its agent restarts: the monitor's stream and the inventory's connection end with it."""
        self._unwatch(mon, an, name)
        inv.forget(name)

    def _resample(self, mon: Monitor, an: Analyser, name: str) -> None:
        mon.add(name)
        an.watch(name)

    def _slots(self) -> SlotBook | None:
        """The switches' wildcard slots, from the controller's status (read between actions: no
        move runs). None if it does not answer: the plan goes on without them, the controller
        still refuses a move that lacks them."""
        try:
            st = controller.call(self.testbed, "GET", "/status", timeout=5)
        except NfxError as e:
            self._held([f"the controller's status (switch slots) is not read: {e}"])
            return None
        self.status = st
        return SlotBook.from_status(st)

    def _held(self, notes: list[str]) -> None:
        """Why moves the loop wanted were not planned: logged when it changes."""
        if notes and notes != self.last_notes:
            self.timeline.note("held", reasons=notes)
            for n in notes:
                self.on_line(f"held: {n}")
        self.last_notes = list(notes)

    # ---- instances coming and going ----
    def _added(self, mon: Monitor, an: Analyser, name: str) -> None:
        self.lost.pop(name, None)                # a name used again: a new instance
        self.recovered.pop(name, None)
        mon.add(name)
        an.watch(name)
        self.timeline.in_service(list(mon.instances))
        self.on_line(f"added {name}")

    def _removing(self, mon: Monitor, an: Analyser, name: str) -> None:
        # its interfaces' drops go with its netns: counted now, for the run's path_drops
        self.removed_drops += testbed_drops(registry.load(self.testbed), [name])
        self._unwatch(mon, an, name)

    def _unwatch(self, mon: Monitor, an: Analyser, name: str) -> None:
        mon.drop(name)
        for ev in an.forget(name, time.time()):
            self.timeline.event(ev)

    def _removed(self, inv: Inventory, name: str) -> None:
        inv.forget(name)
        self.timeline.in_service([n for n in self.timeline.instances[-1][1] if n != name])
        self.on_line(f"removed {name}")

    def _lost(self, mon: Monitor, an: Analyser, item: Lost) -> None:
        if item.instance in self.lost or item.instance not in mon.instances:
            return                               # known, or one the loop itself took out
        self.lost[item.instance] = item.error
        mon.drop(item.instance)
        for ev in an.forget(item.instance, time.time()):
            self.timeline.event(ev)
        self.timeline.note("lost", instance=item.instance, error=item.error)
        self.on_line(f"lost {item.instance}: {item.error}")

    def _check_recovery(self) -> None:
        """A lost primary the controller's failover replaced: noted once."""
        waiting = [n for n in self.lost if n not in self.recovered]
        if not waiting:
            return
        try:
            st = controller.call(self.testbed, "GET", "/status", timeout=5)
        except NfxError:
            return
        events = (st.get("failover") or {}).get("events") or []
        for name in waiting:
            done = [e for e in events if e.get("failed") == name and e.get("promoted") and not e.get("error")]
            if done:
                e = done[-1]
                self.recovered[name] = e["promoted"]
                self.timeline.note("recovered", instance=name, by=e["promoted"], steered_ms=e.get("steered_ms"))
                self.on_line(f"{name} recovered by failover to {e['promoted']} "
                             f"(traffic there {e.get('steered_ms')} ms after the verdict)")
