"""Batched sharing, an instance's sending half (issue 13; the cluster slides): one thread reads the
instance's statelet ring while the gate shares state. The NF writes a packet's record only at its
flow's batch boundary (its stamp, the ingress switch's count of the flow's packets, a multiple of
S_batch: nfx_gate_cfg.share_batch), when it came unstamped, or when it made or ended an entry;
each record starts with the packet's STAMP and carries whole entries (nfx_statelet.h). Per flow
the thread coalesces records (nfx/state/coalesce.py) and sends the flow's batch to every other
member of the cluster (`share_put`, nfx/agent/share.py):
- at a boundary record (unstamped: every S_batch records);
- at once when the packet made a NAT mapping (a connection's mapping must be on every member
  before anyone needs it) or ended an entry (the flow ended);
- when the flow's pending records have been idle for idle_s;
- and every idle_s a sweep of the maps (nfx/state/sweep.py) shares the entries that changed
  since they were last shared and went idle: a flow's packets after its last boundary.
Batches go out at least every send period (SEND_EVERY_S unless share_start gives send_ms; 0:
after every read of the ring that made one), in ring order, over one connection per member.
A move (`flush`) first takes what the ring holds, then sends, as one batch per flow direction,
its pending records plus what the maps hold of the moved flows beyond what was last shared
(they are cut at the source already): after it, a member holds everything this instance did to
them, up to the move."""
import logging
import queue
import threading
import time

from .. import layout as L
from ..errors import NfxError
from ..state.coalesce import Delta, encode_batch
from ..state.statelets import StateletReader, parse_record, replayable, stamp_of
from ..state.sweep import SharedLog
from .. import registry
from .client import AgentClient

log = logging.getLogger("nfx.agent.share")

POLL_MS = 2
SEND_EVERY_S = 0.005
SEND_MAX = 512 << 10          # batch bytes per request (a request stops at 1 MiB, base64 adds a third)
IDLE_CHECK_S = 0.02
COUNTERS_EVERY_S = 1.0        # the instance's commutative counters to etcd (merged eventually)
SET = int(L.StOp.SET)
AT_ONCE = {int(L.StTable.NAT_PORTS)}     # a NAT mapping's creation (a port is claimed only then)


class Sharer:
    def __init__(self, agent, members: list[str], batch: int, idle_s: float, reader: StateletReader,
                 publish=None, send_every_s: float = SEND_EVERY_S):
        self.nf, self.me, self.testbed = agent.nf, agent.instance, agent.testbed
        self.members, self.batch, self.idle_s = list(members), batch, idle_s
        self.send_every_s = send_every_s
        self.reader = reader
        self.pending: dict[bytes, Delta] = {}
        self.outbox: list[bytes] = []
        self.out_bytes = 0
        self.peers = {m: AgentClient(self.testbed, m, ns=None, timeout=10.0) for m in self.members}   # from this netns
        self.counts = {"records": 0, "unstamped": 0, "batches": 0, "statelets": 0, "bytes": 0, "sends": 0,
                       "at_once": 0, "idle": 0, "swept": 0, "sweeps": 0, "flushes": 0}
        self.log = SharedLog(self.nf.kind)        # what was last shared of each entry
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
        for c in list(self.peers.values()):
            c.close()

    def drop(self, member: str) -> bool:
        """Stop sharing with `member` (it failed: issue 14), from any thread, at once: a send
        blocked on it (a stopped process still accepts, and never answers) is cut short."""
        c = self.peers.pop(member, None)
        if c is None:
            return False
        self.members = [m for m in self.members if m != member]
        c.interrupt()
        c.close()            # a send still inside it fails, and is not counted against anyone
        self.errors.pop(member, None)
        return True

    # ---- commands from other threads (run on the sharer's thread, in ring order) ----
    def flush(self, flows: set | None = None, timeout: float = 30.0) -> dict:
        """What is pending of `flows` (raw keys, each direction's; None: every flow), now, to every
        member; returns what that sent."""
        return self._call(lambda: self._flush_all(flows), timeout)

    def add_base(self, pieces: list[bytes], timeout: float = 30.0) -> dict:
        """State written here by a put (a move from outside the cluster), to every member as a base
        for the batches that will follow: sent before the put answers, so before those flows run."""
        return self._call(lambda: self._send_base(pieces), timeout)

    def forget(self, keys_blob: str, timeout: float = 30.0) -> dict:
        """Flows that left the cluster (a move across, done): every member drops its replicas of
        them. On this thread, after any batch of theirs already taken (in ring order)."""
        return self._call(lambda: self._send_forget(keys_blob), timeout)

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
                "send_ms": self.send_every_s * 1e3,
                "pending_flows": len(self.pending), "shared_entries": self.log.entries(), **self.counts,
                "errors": dict(self.errors),
                "alive": self.thread.is_alive(), "failed": repr(self.failed) if self.failed else None,
                "publish_error": self.publish_error}

    # ---- the loop ----
    def _run(self) -> None:
        last_send = last_idle = last_pub = last_sweep = time.monotonic()
        try:
            while not self.stopping.is_set():
                self._take(self.reader.poll_raw(POLL_MS))
                now = time.monotonic()
                if now - last_idle >= IDLE_CHECK_S:
                    self._idle(now)
                    last_idle = now
                if now - last_sweep >= self.idle_s:
                    self._sweep(now)
                    last_sweep = now
                while not self.cmds.empty():
                    fn, done = self.cmds.get()
                    try:
                        done.put(fn())
                    except Exception as e:   # noqa: BLE001 (handed to the caller)
                        done.put(e)
                if self.outbox and (now - last_send >= self.send_every_s or self.out_bytes >= SEND_MAX):
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
            at_once = any(u.op != SET or u.table in AT_ONCE for u in ups)
            if at_once:
                self.counts["at_once"] += 1
            if at_once or (stamp % self.batch == 0 if stamp else d.packets >= self.batch):
                self._out(flow)

    def _out(self, flow: bytes) -> None:
        d = self.pending.pop(flow)
        self.log.note(d.entries.values())
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

    def _join(self, got: dict, now: float) -> None:
        """Whole entries read from the maps (nfx/state/sweep.py), into their flows' pending batches."""
        for flow, ups in got.items():
            d = self.pending.get(flow)
            if d is None:
                d = self.pending[flow] = Delta()
            d.add(ups)
            d.last = now

    def _sweep(self, now: float, force: bool = False) -> None:
        """The entries that changed since last shared and went idle (force: all that changed),
        each flow's as its batch."""
        got = self.log.changed_idle(self.nf, int(self.idle_s * 1e9), force)
        self._join(got, now)
        for f in got:
            self._out(f)
        self.counts["swept"] += len(got)
        self.counts["sweeps"] += 1

    def _flush_all(self, only: set | None = None) -> dict:
        self._take(self.reader.poll_raw(0))
        self._take(self.reader.poll_raw(0))
        self._send()                    # batches already due go first, and are not counted here
        c0 = dict(self.counts)
        # what the maps hold beyond the last shared batches: of the moved flows (cut at the
        # source already, so final), or of every flow when sharing stops
        now = time.monotonic()
        self._join(self.log.changed_idle(self.nf, 0, force=True) if only is None
                   else self.log.changed_flows(self.nf, only), now)
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

    def _failed(self, member: str, e: BaseException) -> None:
        if member in self.peers:          # a member dropped meanwhile (drop) is no error
            self.errors[member] = str(e)

    def _working(self) -> list:
        """The members to send to: not one that missed a batch (its replicas are broken: it is
        waited on no longer, which a member that stopped answering would make take seconds)."""
        return [(m, c) for m, c in list(self.peers.items()) if m not in self.errors]

    def name_for(self, member: str) -> str:
        """How `member` knows this instance: its name in this testbed, nf0@A in a joined one."""
        return registry.as_seen_by(self.me, self.testbed, member)

    def _send_base(self, pieces: list[bytes]) -> dict:
        self._send()
        for m, c in self._working():
            try:
                for piece in pieces:
                    c.request("share_put", src=self.name_for(m), add=piece)
            except Exception as e:   # noqa: BLE001
                self._failed(m, e)
        n = sum(map(len, pieces))
        self.counts["base_bytes"] = self.counts.get("base_bytes", 0) + n
        return {"bytes": n, "errors": dict(self.errors)}

    def _send_forget(self, keys_blob: str) -> dict:
        self._send()
        forgot = {}
        for m, c in self._working():
            try:
                forgot[m] = c.request("share_put", src=self.name_for(m), forget=keys_blob)["forgot"]
            except Exception as e:   # noqa: BLE001 (a member that keeps them wastes memory, nothing more)
                self._failed(m, e)
        return {"forgot": forgot, "errors": dict(self.errors)}

    def _send(self) -> None:
        if not self.outbox:
            return
        blob = b"".join(self.outbox)
        self.outbox, self.out_bytes = [], 0
        for m, c in self._working():
            try:
                c.request("share_put", src=self.name_for(m), blob=blob)
            except Exception as e:   # noqa: BLE001 (a member that misses a batch is marked broken)
                self._failed(m, e)
                log.warning("share to %s failed: %s", m, e)
        self.counts["bytes"] += len(blob)
        self.counts["sends"] += 1
