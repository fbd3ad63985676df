"""The loop's record of a run: every sample, every event, every plan with its reasons and every
action with its outcome (a move's metrics as the controller returned them), on one clock
(time.monotonic() from the run's start, seconds). Thread-safe: the monitor's side, the
planner's and the actions' all write to it. summary() is what `orchestrate run --json` prints."""
import json
import threading
import time
from pathlib import Path


class Timeline:
    def __init__(self, capacity_pps: float, interval_s: float, log_path: Path | None = None):
        """log_path: the decision log, started over (events, plans, actions, notes; not samples)."""
        self.t0 = time.monotonic()
        self.log = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = log_path.with_suffix(".tmp")
            tmp.write_text("")
            tmp.replace(log_path)            # a new file: a follower sees the run start over
            self.log = open(log_path, "a", buffering=1)
        self.capacity_pps = capacity_pps
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self.events: list[dict] = []
        self.plans: list[dict] = []
        self.actions: list[dict] = []
        self.instances: list[tuple[float, list[str]]] = []     # (t, instances in service from t)
        self.notes: list[dict] = []                              # losses, recoveries, the scenario's phases
        self.traffic: list[dict] = []                            # the generator's and the sink's, over time
        self._lock = threading.Lock()

    def _logged(self, what: str, rec: dict) -> None:
        """One line of the decision log (under the lock)."""
        if self.log is not None:
            try:
                self.log.write(json.dumps({"what": what, "ts": time.time(), **rec}, default=str) + "\n")
            except (OSError, ValueError):
                self.log = None              # a log that cannot be written is no reason to stop

    def close(self) -> None:
        with self._lock:
            if self.log is not None:
                self.log.close()
                self.log = None

    def t(self, mono: float | None = None) -> float:
        return round((time.monotonic() if mono is None else mono) - self.t0, 4)

    def sample(self, s) -> None:
        with self._lock:
            self.samples.append({"t": self.t(s.got), "instance": s.instance, "pps": round(s.pps, 1),
                                 "drops": s.drops, "flows": s.flows})

    def traffic_sample(self, sent: int, received: int, p99_us: float | None) -> None:
        """The traffic so far (sent, received: totals) and the p99 latency since the last sample."""
        with self._lock:
            self.traffic.append({"t": self.t(), "sent": sent, "received": received, "p99_us": p99_us})

    def event(self, ev) -> None:
        with self._lock:
            self.events.append({"t": self.t(), "kind": ev.kind, "instance": ev.instance,
                                "active": ev.active, "value": ev.value})
            self._logged("event", {"t": self.events[-1]["t"], "condition": ev.kind, "instance": ev.instance,
                                   "active": ev.active, "value": ev.value})

    def plan(self, views: dict, actions: list, inventory_s: float, slots_free: int | None = None,
             kind: str = "balance") -> None:
        """kind: balance (the planner's round) or a drain's phase (off, upgrade, back)."""
        with self._lock:
            self.plans.append({"t": self.t(), "kind": kind, "inventory_s": round(inventory_s, 4),
                               "load": {n: round(v.pps, 1) for n, v in views.items()},
                               "flows": {n: v.flows for n, v in views.items()},
                               "slots_free": slots_free,
                               "actions": [a.as_dict() for a in actions]})
            self._logged("plan", self.plans[-1])

    def action(self, record: dict) -> None:
        with self._lock:
            self.actions.append(record)
            self._logged("action", record)

    def in_service(self, names: list[str]) -> None:
        with self._lock:
            self.instances.append((self.t(), sorted(names)))

    def note(self, kind: str, **fields) -> None:
        with self._lock:
            self.notes.append({"t": self.t(), "kind": kind, **fields})
            self._logged("note", self.notes[-1])

    def seconds_over_budget(self) -> dict[str, float]:
        """Per instance: the time its samples stood above the capacity (each sample stands for
        the interval before it)."""
        out: dict[str, float] = {}
        for s in self.samples:
            out.setdefault(s["instance"], 0.0)
            if s["pps"] > self.capacity_pps:
                out[s["instance"]] += self.interval_s
        return {n: round(v, 2) for n, v in out.items()}

    def summary(self, traffic: dict | None = None) -> dict:
        with self._lock:
            done = [a for a in self.actions if a.get("ok")]
            failed = [a for a in self.actions if not a.get("ok")]
            counts = {k: sum(1 for a in done if a["kind"] == k) for k in ("add", "move", "remove", "upgrade")}
            kinds: dict[str, int] = {}
            for p in self.plans:
                kinds[p.get("kind", "balance")] = kinds.get(p.get("kind", "balance"), 0) + 1
            over = self.seconds_over_budget()
            peak = max((len(n) for _, n in self.instances), default=0)
            out = {"duration_s": self.t(), "scale_outs": counts["add"], "scale_ins": counts["remove"],
                   "moves": counts["move"], "upgrades": counts["upgrade"], "failed_actions": len(failed),
                   "plans": len(self.plans), "plan_kinds": kinds,
                   "drains": sum(1 for n in self.notes if n["kind"] == "drain-done"),
                   "instances_peak": peak, "instances_end": len(self.instances[-1][1]) if self.instances else 0,
                   "seconds_over_budget": round(sum(over.values()), 2), "over_budget_by_instance": over,
                   "samples": len(self.samples), "events": len(self.events)}
        if traffic is not None:
            for k in ("sent", "received", "lost", "duplicated", "reordered", "path_drops"):
                out[k] = traffic.get(k)
            out["latency_us"] = {k: traffic.get(f"lat_{k}_us") for k in ("p50", "p99", "max")}
        return out

    def as_dict(self, traffic: dict | None = None) -> dict:
        with self._lock:
            body = {"samples": list(self.samples), "events": list(self.events), "plans": list(self.plans),
                    "actions": list(self.actions), "instances": [{"t": t, "names": n} for t, n in self.instances],
                    "notes": list(self.notes), "capacity_pps": self.capacity_pps,
                    "traffic_samples": list(self.traffic)}
        return {"summary": self.summary(traffic), **body, "traffic": traffic}
