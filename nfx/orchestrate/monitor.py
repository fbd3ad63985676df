"""The monitor: every NF instance of a running testbed, sampled through its agent's stats stream
(one subscription and one thread per instance), each sample kept in a short per-instance
history and handed to whoever analyses them through one queue.

A sample is what the instance did in the last interval (pps over every verdict, drops, verdict
and reason deltas) and what it holds now (flows, state bytes, hold FIFO depth), as the agent's
StatsSource reports them, plus its XDP program's run time in the interval while the kernel's
run stats are on (the monitor turns them on with BPF_ENABLE_STATS for as long as it runs: that
is the program's own time, not the driver's or the rest of the softirq's).

    with Monitor("tb", policy) as m:
        s = m.next(timeout=1.0)      # a Sample, a Lost, or None
"""
import collections
import dataclasses
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

from .. import registry
from ..agent.client import AgentClient, Subscription
from ..errors import AgentDown, BadInput, NfxError, NotFound
from ..loader import bpfsys
from .policy import Policy

log = logging.getLogger("nfx.orchestrate")

DROP_VERDICTS = ("v_drop", "v_aborted")
QUEUE = 100_000


@dataclass
class Sample:
    instance: str
    t: float                           # unix time the agent sent it (it read the counters just before)
    interval_s: float = 0.0            # since the agent's previous read, by its clock
    pps: float = 0.0                   # packets the program ran on (every verdict) per second
    drops: int = 0                     # packets it dropped in the interval (a buffered original counts too)
    verdicts: dict = field(default_factory=dict)     # v_* deltas
    reasons: dict = field(default_factory=dict)      # r_* deltas
    flows: int | None = None           # live per-flow entries, where the NF counts them cheaply
    state_bytes: int | None = None     # flows x the bytes a flow holds in the per-flow tables
    hold_depth: int | None = None      # packets in the gate's hold FIFO
    hold_slots: int | None = None
    cpu_ns: int | None = None          # the program's run time in the interval (None: run stats off)
    runs: int | None = None            # its runs in the interval, as the kernel counted them
    got: float = 0.0                   # time.monotonic() when the monitor read it

    @property
    def cpu_share(self) -> float | None:
        """The share of one CPU the program took in the interval."""
        if self.cpu_ns is None or self.interval_s <= 0:
            return None
        return self.cpu_ns / (self.interval_s * 1e9)

    @property
    def hold_fill(self) -> float | None:
        if self.hold_depth is None or not self.hold_slots:
            return None
        return self.hold_depth / self.hold_slots

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("got")
        d["cpu_share"] = self.cpu_share
        return d


@dataclass
class Lost:
    """An instance's subscription ended: its agent died or went away."""
    instance: str
    error: str
    t: float


def sample_from(instance: str, ev: dict, prev_prog: tuple[int, int] | None) -> tuple[Sample, tuple[int, int] | None]:
    """A Sample from one stats event, and the program's run totals to diff the next one against."""
    delta = ev.get("delta", {})
    g = ev.get("gauges", {})
    dt = float(ev.get("interval_s") or 0.0)
    verdicts = {k: v for k, v in delta.items() if k.startswith("v_")}
    s = Sample(instance, float(ev.get("ts") or time.time()), dt,
               pps=sum(verdicts.values()) / dt if dt > 0 else 0.0,
               drops=sum(delta.get(k, 0) for k in DROP_VERDICTS),
               verdicts=verdicts, reasons={k: v for k, v in delta.items() if not k.startswith("v_")},
               flows=g.get("flows"), state_bytes=g.get("state_bytes"),
               hold_depth=g.get("hold_depth"), hold_slots=g.get("hold_slots"), got=time.monotonic())
    prog = (g["prog_run_ns"], g["prog_run_cnt"]) if "prog_run_ns" in g else None
    if prog is not None and prev_prog is not None:
        runs = prog[1] - prev_prog[1]
        # the kernel counts only while run stats are on: runs that match the packets say they were
        if runs > 0 or not verdicts:
            s.cpu_ns, s.runs = prog[0] - prev_prog[0], runs
    return s, prog


class Monitor:
    """Samples the NF instances of testbed `testbed` (default: every one) every
    policy.monitor.interval_ms; start() raises before any thread runs if the testbed, an
    instance or an agent is missing."""

    def __init__(self, testbed: str, policy: Policy, instances: list[str] | None = None, run_stats: bool = True):
        self.testbed = testbed
        self.policy = policy
        self.want = list(dict.fromkeys(instances)) if instances else None
        self.want_run_stats = run_stats
        self.instances: list[str] = []
        self.history: dict[str, collections.deque] = {}
        self.errors: dict[str, str] = {}
        self.run_stats = "off"                  # "on", or why not
        self.queued_drops = 0                   # samples nobody read in time
        self._q: queue.Queue = queue.Queue(QUEUE)
        self._stop = threading.Event()
        self._stops: dict[str, threading.Event] = {}     # one instance's, for drop()
        self._threads: list[threading.Thread] = []
        self._stats_fd: int | None = None
        self._cpu0 = 0.0

    # ---- lifecycle ----
    def start(self) -> "Monitor":
        rec = registry.load(self.testbed)
        if rec.get("status") != "up":
            raise NotFound(f"testbed {self.testbed} is {rec.get('status')}, not up")
        nfs = [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]
        targets = self.want or nfs
        for n in targets:
            if n not in nfs:
                raise NotFound(f"no NF instance {n!r} in testbed {self.testbed}",
                               hint=f"instances: {', '.join(nfs) or 'none'}")
        if not targets:
            raise NotFound(f"testbed {self.testbed} has no NF instances")
        self.instances = targets
        self.history = {n: collections.deque(maxlen=self.policy.monitor.history) for n in targets}
        self._enable_run_stats()
        opened: dict[str, tuple[AgentClient, Subscription]] = {}
        try:
            for n in targets:                   # every agent answers before any thread starts
                opened[n] = self._subscribe(n)
        except BaseException:
            for c, _ in opened.values():
                c.close()
            self._disable_run_stats()
            raise
        self._cpu0 = time.process_time()
        for n in targets:
            self._start_thread(n, *opened[n])
        return self

    def add(self, instance: str) -> None:
        """Sample one more instance (one the loop added while running)."""
        if instance in self._stops and not self._stops[instance].is_set():
            return
        c, sub = self._subscribe(instance)
        if instance not in self.instances:
            self.instances.append(instance)
        self.history.setdefault(instance, collections.deque(maxlen=self.policy.monitor.history))
        self._start_thread(instance, c, sub)

    def drop(self, instance: str) -> None:
        """Stop sampling one instance (before the loop removes it: its end is not a loss)."""
        ev = self._stops.get(instance)
        if ev is not None:
            ev.set()
        if instance in self.instances:
            self.instances.remove(instance)

    def _start_thread(self, instance: str, client, sub) -> None:
        self._stops[instance] = threading.Event()
        t = threading.Thread(target=self._run, args=(instance, client, sub), name=f"monitor-{instance}", daemon=True)
        self._threads.append(t)
        t.start()

    def stop(self) -> None:
        """End every subscription (each thread closes its own) and the run stats."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        self._threads = []
        self._disable_run_stats()

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def cpu_s(self) -> float:
        """CPU time this process spent since start() (the monitor's threads and whatever else runs in it)."""
        return time.process_time() - self._cpu0

    # ---- reading ----
    def next(self, timeout: float | None = None) -> Sample | Lost | None:
        """The next sample (or Lost) of any instance, in arrival order; None after `timeout` s."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def latest(self) -> dict[str, Sample]:
        return {n: h[-1] for n, h in self.history.items() if h}

    # ---- inside ----
    def _subscribe(self, instance: str) -> tuple[AgentClient, Subscription]:
        c = AgentClient(self.testbed, instance, timeout=10)
        try:
            sub = c.subscribe(("stats",), self.policy.interval_s)
        except NfxError:
            c.close()
            raise
        except OSError as e:
            c.close()
            raise AgentDown(f"the agent of {instance} does not answer: {e}",
                            hint=f"nfx nf list --name {self.testbed}") from None
        if "stats" not in sub.streams:
            c.close()
            raise BadInput(f"{instance}: its agent serves no stats stream: {sub.unavailable.get('stats')}")
        return c, sub

    def _run(self, instance: str, client: AgentClient, sub: Subscription) -> None:
        prev_prog = None
        mine = self._stops[instance]
        try:
            while not self._stop.is_set() and not mine.is_set():
                ev = sub.next_event(0.2)
                if ev is None:
                    if not sub.open and not mine.is_set():
                        raise AgentDown(f"the agent of {instance} ended the subscription ({sub.summary})")
                    continue
                if ev.get("stream") != "stats":
                    continue
                s, prev_prog = sample_from(instance, ev, prev_prog)
                self.history[instance].append(s)
                self._put(s)
        except NfxError as e:
            if mine.is_set():
                return                          # dropped: its end is not a loss
            self.errors[instance] = str(e)
            self._put(Lost(instance, str(e), time.time()))
        except Exception as e:                  # a bug here must not pass for a quiet instance
            log.exception("monitor of %s", instance)
            self.errors[instance] = f"{type(e).__name__}: {e}"
            self._put(Lost(instance, self.errors[instance], time.time()))
        finally:
            try:
                if sub.open:
                    sub.close()
            except (NfxError, OSError):
                pass
            client.close()

    def _put(self, item) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.queued_drops += 1

    def _enable_run_stats(self) -> None:
        if not self.want_run_stats:
            self.run_stats = "off (not asked for)"
            return
        try:
            self._stats_fd = bpfsys.enable_run_stats()
            self.run_stats = "on"
        except OSError as e:
            self.run_stats = f"unavailable: BPF_ENABLE_STATS refused ({e.strerror})"

    def _disable_run_stats(self) -> None:
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None
