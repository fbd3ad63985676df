"""Batched sharing, an instance's sending half (issue 13; the cluster slides): one thread reads the
instance's statelet ring while the gate's `share` flag has every processed packet write its
statelet record, first of which is the packet's STAMP (the ingress switch's count of the flow's
packets, nfx_statelet.h). Per flow it coalesces what the packets did (nfx/state/coalesce.py) and
sends the flow's batch to every other member of the cluster (`share_put`, nfx/agent/share.py):
- when the flow's stamp reaches a multiple of S_batch (unstamped: every S_batch packets);
- at once when the packet created a NAT mapping (a connection's mapping must be on every member
  before anyone needs it) or deleted a per-flow entry (the flow ended);
- when the flow has been idle for idle_s.
Batches go out at least every SEND_EVERY_S, in ring order, over one connection per member.
A move (`flush`) first takes what the ring holds, then sends every flow's pending batch: after
it, a member holds everything this instance did, up to the move."""
import logging
import queue
import threading
import time

from .. import layout as L
from ..errors import NfxError
from ..state.coalesce import Delta, encode_batch
from ..state.statelets import SCHEMAS, StateletReader, parse_record, replayable, stamp_of
from .client import AgentClient

log = logging.getLogger("nfx.agent.share")

POLL_MS = 2
SEND_EVERY_S = 0.005
SEND_MAX = 512 << 10          # batch bytes per request (a request stops at 1 MiB, base64 adds a third)
IDLE_CHECK_S = 0.02
COUNTERS_EVERY_S = 1.0        # the instance's commutative counters to etcd (merged eventually)
SET = int(L.StOp.SET)
AT_ONCE = {int(L.StTable.NAT_FWD), int(L.StTable.NAT_REV)}     # a NAT mapping's creation


class Sharer:
    def __init__(self, agent, members: list[str], batch: int, idle_s: float, reader: StateletReader,
                 publish=None):
        self.nf, self.me, self.testbed = agent.nf, agent.instance, agent.testbed
        self.members, self.batch, self.idle_s = list(members), batch, idle_s
        self.reader = reader
        self.pending: dict[bytes, Delta] = {}
        self.outbox: list[bytes] = []
        self.out_bytes = 0
        self.peers = {m: AgentClient(self.testbed, m, ns=None, timeout=10.0) for m in self.members}   # from this netns
        self.counts = {"records": 0, "unstamped": 0, "batches": 0, "statelets": 0, "bytes": 0, "sends": 0,
                       "at_once": 0, "idle": 0, "flushes": 0}
        self.errors: dict[str, str] = {}           # member -> its last send error (sharing with it is broken)
        self.cmds: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sharer", daemon=True)
        self.publish = publish                     # () -> None: counters to etcd, or None
        self.publish_error: str | None = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        for c in self.peers.values():
            c.close()

    # ---- commands from other threads (run on the sharer's thread, in ring order) ----
    def flush(self, flows: set | None = None, timeout: float = 30.0) -> dict:
        """What is pending of `flows` (raw keys, each direction's; None: every flow), now, to every
        member; returns what that sent."""
        return self._call(lambda: self._flush_all(flows), timeout)

    def add_base(self, pieces: list[bytes], timeout: float = 30.0) -> dict:
        """State written here by a put (a move from outside the cluster), to every member as a base
        for the batches that will follow: sent before the put answers, so before those flows run."""
        return self._call(lambda: self._send_base(pieces), timeout)

    def _call(self, fn, timeout: float) -> dict:
        if not self.thread.is_alive():
            raise NfxError(f"the sharing of {self.me} has stopped ({self.failed!r}): share_stop, then cluster up again")
        done: queue.Queue = queue.Queue()
        self.cmds.put((fn, done))
        try:
            r = done.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the sharer of {self.me} did not flush within {timeout:g} s") from None
        if isinstance(r, BaseException):
            raise r
        return r

    def status(self) -> dict:
        return {"members": self.members, "batch": self.batch, "idle_ms": self.idle_s * 1e3,
                "pending_flows": len(self.pending), **self.counts, "errors": dict(self.errors),
                "alive": self.thread.is_alive(), "failed": repr(self.failed) if self.failed else None,
                "publish_error": self.publish_error}

    # ---- the loop ----
    def _run(self) -> None:
        last_send = last_idle = last_pub = time.monotonic()
        try:
            while not self.stopping.is_set():
                self._take(self.reader.poll_raw(POLL_MS))
                now = time.monotonic()
                if now - last_idle >= IDLE_CHECK_S:
                    self._idle(now)
                    last_idle = now
                while not self.cmds.empty():
                    fn, done = self.cmds.get()
                    try:
                        done.put(fn())
                    except Exception as e:   # noqa: BLE001 (handed to the caller)
                        done.put(e)
                if self.outbox and (now - last_send >= SEND_EVERY_S or self.out_bytes >= SEND_MAX):
                    self._send()
                    last_send = now
                if self.publish is not None and now - last_pub >= COUNTERS_EVERY_S:
                    self._publish()
                    last_pub = now
            self._take(self.reader.poll_raw(0))
            self._flush_all()
        except BaseException as e:
            self.failed = e
            log.exception("sharing stopped")

    def _take(self, recs) -> None:
        now = time.monotonic()
        for rec in recs:
            ups = parse_record(rec)
            st = stamp_of(ups)
            self.counts["records"] += 1
            if st is None:
                self.counts["unstamped"] += 1      # not written for sharing (a SLiM mark): nothing to share
                continue
            flow, stamp = st
            ups = list(replayable(ups))
            d = self.pending.get(flow)
            if d is None:
                d = self.pending[flow] = Delta()
            d.add(ups)
            d.packets += 1
            d.stamp = stamp
            d.last = now
            at_once = any(u.op != SET or (u.table in AT_ONCE and u.mask == SCHEMAS[u.table].full_mask) for u in ups)
            if at_once:
                self.counts["at_once"] += 1
            if at_once or (stamp % self.batch == 0 if stamp else d.packets >= self.batch):
                self._out(flow)

    def _out(self, flow: bytes) -> None:
        d = self.pending.pop(flow)
        rec = d.record()
        blob = encode_batch(flow, d.stamp, d.packets, rec)
        self.outbox.append(blob)
        self.out_bytes += len(blob)
        self.counts["batches"] += 1
        self.counts["statelets"] += len(d.entries)
        if self.out_bytes >= SEND_MAX:
            self._send()

    def _idle(self, now: float) -> None:
        old = [f for f, d in self.pending.items() if now - d.last >= self.idle_s]
        for f in old:
            self._out(f)
        self.counts["idle"] += len(old)

    def _flush_all(self, only: set | None = None) -> dict:
        self._take(self.reader.poll_raw(0))
        self._take(self.reader.poll_raw(0))
        self._send()                    # batches already due go first, and are not counted here
        c0 = dict(self.counts)
        due = [f for f in self.pending if only is None or f in only]
        for f in due:
            self._out(f)
        flows = len(due)
        self._send()
        self.counts["flushes"] += 1
        return {"flows": flows, "batches": self.counts["batches"] - c0["batches"],
                "statelets": self.counts["statelets"] - c0["statelets"], "bytes": self.counts["bytes"] - c0["bytes"],
                "members": self.members, "errors": dict(self.errors)}

    def _publish(self) -> None:
        try:
            self.publish()
            self.counts["published"] = self.counts.get("published", 0) + 1
            self.publish_error = None
        except Exception as e:   # noqa: BLE001 (etcd away: counters merge late, nothing else waits)
            self.publish_error = str(e)

    def _send_base(self, pieces: list[bytes]) -> dict:
        self._send()
        for m, c in self.peers.items():
            try:
                for piece in pieces:
                    c.request("share_put", src=self.me, add=piece)
            except Exception as e:   # noqa: BLE001
                self.errors[m] = str(e)
        n = sum(map(len, pieces))
        self.counts["base_bytes"] = self.counts.get("base_bytes", 0) + n
        return {"bytes": n, "errors": dict(self.errors)}

    def _send(self) -> None:
        if not self.outbox:
            return
        blob = b"".join(self.outbox)
        self.outbox, self.out_bytes = [], 0
        for m, c in self.peers.items():
            try:
                c.request("share_put", src=self.me, blob=blob)
            except Exception as e:   # noqa: BLE001 (a member that misses a batch is marked broken)
                self.errors[m] = str(e)
                log.warning("share to %s failed: %s", m, e)
        self.counts["bytes"] += len(blob)
        self.counts["sends"] += 1
