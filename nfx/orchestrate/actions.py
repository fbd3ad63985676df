"""Elasticity and migration control: the planner's actions taken, one at a time, off the
monitor's thread. An add makes the instance (nfx nf add) and has the monitor sample it; a move
goes through the controller's northbound API (which rolls a failed move back); a remove stops
the sampling first, then takes the instance out (nfx nf remove, which refuses one that still
holds flows). A plan stops at its first failure (its later steps counted on it); the failed
action's instances wait retry_ms before the planner may touch them again, the others
cooldown_ms after each action: never two actions on one instance at once, and nothing the
planner wanted is dropped, it is planned again from what the instances then hold."""
import threading
import time

from .. import upgrade as up
from ..errors import NfxError
from ..procs import agents, controller
from ..testbed import grow, shrink
from .plan import Action, CostModel
from .timeline import Timeline


class Actions:
    def __init__(self, testbed: str, policy, timeline: Timeline, cost: CostModel,
                 on_added=None, before_remove=None, on_removed=None, move_timeout_s: float = 30.0,
                 before_upgrade=None, after_upgrade=None, on_done=None):
        self.testbed, self.policy, self.timeline, self.cost = testbed, policy, timeline, cost
        self.on_added = on_added or (lambda name: None)
        self.before_remove = before_remove or (lambda name: None)
        self.on_removed = on_removed or (lambda name: None)
        self.before_upgrade = before_upgrade or (lambda name: None)
        self.after_upgrade = after_upgrade or self.on_added
        self.on_done = on_done or (lambda action, record: None)
        self.move_timeout_s = move_timeout_s
        self.quiet_until: dict[str, float] = {}      # instance -> monotonic time it may be planned for again
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def busy(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            return {n for n, t in self.quiet_until.items() if t > now}

    def start(self, actions: list[Action]) -> bool:
        """Take `actions` in a thread of their own; False if the last plan's still run."""
        if self.running or not actions:
            return False
        self._thread = threading.Thread(target=self._take_all, args=(list(actions),), name="orchestrate-actions",
                                        daemon=True)
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _quiet(self, names, seconds: float) -> None:
        until = time.monotonic() + seconds
        with self._lock:
            for n in names:
                if n:
                    self.quiet_until[n] = max(self.quiet_until.get(n, 0.0), until)

    def _take_all(self, actions: list[Action]) -> None:
        pl = self.policy.planner
        for a in actions:
            ok = self.take(a)
            touched = [a.instance, a.dst]
            if not ok:
                self._quiet(touched, pl.retry_ms / 1000)
                break
            self._quiet(touched, pl.cooldown_ms / 1000)

    def take(self, a: Action) -> bool:
        t0 = time.monotonic()
        rec = {"kind": a.kind, "instance": a.instance, "dst": a.dst, "filter": a.filter, "reason": a.reason,
               "start": self.timeline.t(t0)}
        try:
            if a.kind == "add":
                r = grow.add(self.testbed, a.instance)
                rec["timings_ms"] = r.get("timings_ms")
                self.on_added(a.instance)
            elif a.kind == "move":
                body = {"src": a.instance, "dst": a.dst, "filter": a.filter, "mechanism": a.mechanism,
                        "guarantee": a.guarantee, "timeout": self.move_timeout_s, "wait": 5}
                if a.opts:
                    body["opts"] = a.opts
                m = controller.call(self.testbed, "POST", "/move", body, timeout=self.move_timeout_s * 4)
                rec.update(mechanism=a.mechanism, guarantee=a.guarantee, flows=a.flows, pps=round(a.pps, 1),
                           est_s=a.est_s, metrics={k: m.get(k) for k in
                                                   ("move_time_s", "flows", "entries", "max_added_delay_us",
                                                    "buffered", "lost", "epoch") if k in m})
                if m.get("move_time_s") is not None:
                    self.cost.record(a.mechanism, a.flows, float(m["move_time_s"]))
            elif a.kind == "remove":
                self.before_remove(a.instance)
                shrink.remove(self.testbed, a.instance)
                self.on_removed(a.instance)
            elif a.kind == "upgrade":
                rec.update(self._upgrade(a.instance))
            else:
                raise NfxError(f"unknown action {a.kind!r}")
            rec["ok"] = True
        except NfxError as e:
            rec.update(ok=False, error=str(e))
            if a.kind == "remove":          # still there: sample it again
                self.on_added(a.instance)
        rec["end"] = self.timeline.t()
        rec["seconds"] = round(rec["end"] - rec["start"], 4)
        self.timeline.action(rec)
        self.on_done(a, rec)
        return rec["ok"]

    def _upgrade(self, instance: str) -> dict:
        """nfx nf upgrade's function: the program replaced while it runs, every table kept, its
        agent restarted on the new objects. The monitor stops sampling it first (its agent's
        stream ends with the restart) and samples it again after, upgraded or not."""
        self.before_upgrade(instance)
        try:
            r = up.upgrade(self.testbed, instance)
            agents.restart_stale(self.testbed, instance, r)
        finally:
            self.after_upgrade(instance)
        return {"old_prog_id": r["old_prog_id"], "new_prog_id": r["new_prog_id"], "mode": r.get("mode"),
                "swap_us": (r.get("swap") or {}).get("total_us"), "agent": r.get("agent"),
                "warnings": r.get("warnings") or None}
