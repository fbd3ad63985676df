"""Event streams an agent serves to `subscribe`: a registry of sources by name.

A source has `poll(timeout_ms) -> list[dict]` and, optionally, `close()`. Sources that consume something
(a ringbuf: every record goes to one reader) are `exclusive`: the agent runs one of them per
stream, only while somebody subscribes, and fans its events out to every subscriber. Others are
made per subscriber. Plug in more with `register(name, factory, exclusive=...)`; a factory that
raises (NotFound, ...) makes the stream unavailable, with its message, to that
subscriber."""
import dataclasses
import logging
import os
import queue
import threading
import time

from ..errors import BpfError, NotFound
from ..loader import bpfsys
from ..nfs.ids import AlertReader
from ..state.statelets import StateletReader

log = logging.getLogger("nfx.agent")


@dataclasses.dataclass
class Stream:
    name: str
    factory: object          # (nf, params: dict) -> source
    exclusive: bool


REGISTRY: dict[str, Stream] = {}


def register(name: str, factory, exclusive: bool = False) -> None:
    REGISTRY[name] = Stream(name, factory, exclusive)


# ---- stats: counter deltas every interval -------------------------------------------------------
FLOWS_BUDGET = 0.05      # the share of its time a stats stream may spend counting flows


class StatsSource:
    """Every `interval`: the verdict/reason counters' deltas and totals, and `gauges`: what the
    instance holds now (flows, state_bytes, hold_depth/slots/peak, where the NF can tell) and its
    program's run time totals (prog_run_ns, prog_run_cnt: counted only while the kernel's run
    stats are on, BPF_ENABLE_STATS; the orchestration monitor turns them on while it runs)."""

    def __init__(self, nf, params: dict):
        self.nf = nf
        self.interval = max(0.05, float(params.get("interval", 1.0)))
        self.last = nf.stats()
        self.t_last = time.monotonic()
        self.next = self.t_last + self.interval
        self.flows: int | None = None
        self.flows_at = 0.0
        self.flows_due = 0.0
        self.prog_fd: int | None = None
        try:
            self.prog_fd = bpfsys.obj_get(str(nf.pin_dir / "prog"))
        except (BpfError, AttributeError, TypeError):
            pass                              # no pinned program: no run times

    def poll(self, timeout_ms: int = 0) -> list[dict]:
        now = time.monotonic()
        if now < self.next:
            wait = min(self.next - now, timeout_ms / 1000)
            if wait > 0:
                time.sleep(wait)
            if time.monotonic() < self.next:
                return []
        cur = self.nf.stats()
        now = time.monotonic()
        delta = {k: v - self.last.get(k, 0) for k, v in cur.items() if v != self.last.get(k, 0)}
        ev = {"interval_s": round(now - self.t_last, 4), "delta": delta, "total": cur, "gauges": self._gauges(now)}
        self.last, self.t_last = cur, now
        self.next += self.interval
        if self.next < now:                     # fell behind: no burst of catch-up events
            self.next = now + self.interval
        return [ev]

    def wait_s(self) -> float:
        """Seconds until the next event is due: how long the subscription may sleep."""
        return self.next - time.monotonic()

    def _gauges(self, now: float) -> dict:
        g: dict = {}
        if now >= self.flows_due:
            t0 = time.perf_counter()
            self.flows = self.nf.flow_count()
            cost = time.perf_counter() - t0
            self.flows_at = now
            # a dear count (a big LRU walked entry by entry) is read less often, not every time
            self.flows_due = now + cost / FLOWS_BUDGET
        if self.flows is not None:
            g["flows"] = self.flows
            g["flows_age_s"] = round(now - self.flows_at, 4)
            if self.nf.FLOW_BYTES:
                g["state_bytes"] = self.flows * self.nf.FLOW_BYTES
        try:
            hs = self.nf.gate.hold_state()
            g["hold_depth"] = (hs.head - hs.cursor) & 0xFFFFFFFF
            g["hold_peak"] = hs.peak
            g["hold_slots"] = self.nf.maps.nfx_hold.max_entries
        except (BpfError, AttributeError):
            pass                              # an instance built without the hold FIFO
        if self.prog_fd is not None:
            g["prog_run_ns"], g["prog_run_cnt"] = bpfsys.prog_run_stats(self.prog_fd)
        return g

    def close(self) -> None:
        if self.prog_fd is not None:
            os.close(self.prog_fd)
            self.prog_fd = None


# ---- IDS alerts: the ids_alerts ringbuf ---------------------------------------------------------
class AlertSource:
    def __init__(self, nf, params: dict):
        if nf.kind != "ids" or nf.maps.ids_alerts is None:
            raise NotFound(f"instance {nf.instance} runs {nf.kind}: it has no alert ring")
        self.reader = AlertReader(nf.maps.ids_alerts.fd)

    def poll(self, timeout_ms: int = 0) -> list[dict]:
        return [dataclasses.asdict(a) for a in self.reader.poll(timeout_ms)]

    def close(self) -> None:
        self.reader.close()


register("stats", lambda nf, p: StatsSource(nf, p), exclusive=False)
register("alerts", lambda nf, p: AlertSource(nf, p), exclusive=True)
register("statelets", lambda nf, p: StateletReader(nf), exclusive=True)


# ---- fan-out for exclusive sources --------------------------------------------------------------
class Hub:
    """One source, polled by one thread while it has subscribers; events to every subscriber's queue."""

    QUEUE = 100_000

    def __init__(self, stream: Stream, nf):
        self.stream = stream
        self.nf = nf
        self.lock = threading.Lock()
        self.subs: set[queue.Queue] = set()
        self.thread: threading.Thread | None = None
        self.stop: threading.Event | None = None
        self.dropped = 0

    def join(self, params: dict) -> queue.Queue:
        with self.lock:
            if self.thread is not None and self.stop.is_set():
                self.thread.join(timeout=2)         # the last one left a moment ago: let it finish
                self.thread = None
            if self.thread is None:
                src = self.stream.factory(self.nf, params)   # raises: the stream is unavailable
                self.stop = threading.Event()
                self.thread = threading.Thread(target=self._run, args=(src, self.stop), daemon=True,
                                               name=f"stream-{self.stream.name}")
                self.thread.start()
            q = queue.Queue(self.QUEUE)
            self.subs.add(q)
            return q

    def leave(self, q: queue.Queue) -> None:
        with self.lock:
            self.subs.discard(q)
            if not self.subs and self.stop is not None:
                self.stop.set()

    def _run(self, src, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    evs = src.poll(200)
                except Exception as e:     # a broken source ends its stream, not the agent
                    log.exception("stream %s failed", self.stream.name)
                    evs = [{"error": f"stream failed: {e}"}]
                    stop.set()
                if not evs:
                    continue
                with self.lock:
                    subs = list(self.subs)
                for q in subs:
                    for ev in evs:
                        try:
                            q.put_nowait(ev)
                        except queue.Full:
                            self.dropped += 1
        finally:
            try:
                close = getattr(src, "close", None)
                if close:
                    close()
            except Exception:
                log.exception("closing stream %s", self.stream.name)
