"""A cluster member's replicas (issue 13): what the other members of its cluster share in batches
(nfx/state/coalesce.py), held here, not in the maps: the member does not process these flows.

Per-flow entries go into one store, whoever sent them: a flow's entries are its own, and after a
move its new instance's batches land on what its old one shared (values are absolute, incarnations
tagged, so a replay lands on an entry exactly). Multi-flow entries (an IDS host's counters, a NAT
public port's owner) are kept per sender: each instance's host counters count that instance's
packets. Batches are applied in stamp order per flow: one older than what a flow's replica already
holds is skipped (counted `stale`).

A move to this member takes the moved flows from here (`select`, by the filter, as an export
would select them from maps) plus the source's last batch, which the move sends first."""
import io
import threading
import time

from ..filter import Filter
from . import ops, wire
from .coalesce import decode_batches
from .replay_one import Tables, apply_slow
from .statelets import SCHEMAS
from .tables import tables

PER_FLOW = "per-flow"


class Replicas:
    def __init__(self, kind: str):
        self.kind = kind
        self.per_flow = {t.name for t in tables(kind, (PER_FLOW,))}
        self.by_flow = {t.name for t in tables(kind) if t.select == "value_flow" and t.name not in self.per_flow}
        self.flows = Tables(kind)
        self.multi: dict[str, Tables] = {}
        self.stamps: dict[bytes, int] = {}         # flow -> stamp of the last batch applied
        self.owner: dict[tuple[str, bytes], str] = {}   # per-flow entry -> the member whose flow it is
        self.lock = threading.Lock()
        self.counts = {"batches": 0, "stale": 0, "statelets": 0, "bytes": 0, "bases": 0, "orphans": 0,
                       "forgotten": 0}
        self.based: dict[str, float] = {}       # member -> when its base (first piece) came: in sync since

    def _mine(self, src: str) -> Tables:
        t = self.multi.get(src)
        if t is None:
            t = self.multi[src] = Tables(self.kind)
        return t

    def apply(self, src: str, blob) -> dict:
        """Batches from member `src`, in order. Returns what this call applied."""
        got = {"batches": 0, "stale": 0, "statelets": 0}
        rep: dict = {}
        with self.lock:
            multi = self._mine(src)
            for b in decode_batches(blob):
                last = self.stamps.get(b.flow, 0)
                if b.stamp and b.stamp < last:
                    got["stale"] += 1
                    continue
                if b.stamp:
                    self.stamps[b.flow] = b.stamp
                pf = [u for u in b.updates if _name(u) in self.per_flow]
                mf = [u for u in b.updates if _name(u) not in self.per_flow]
                if pf:
                    apply_slow(self.flows, pf, rep)
                    for u in pf:
                        self.owner[(SCHEMAS[u.table].name, u.key)] = src
                if mf:
                    apply_slow(multi, mf, rep)
                got["batches"] += 1
                got["statelets"] += len(b.updates)
            for k in ("batches", "stale", "statelets"):
                self.counts[k] += got[k]
            self.counts["bytes"] += len(blob)
            self.counts["orphans"] += rep.get("orphans", 0)
        return got

    def base(self, src: str, blob, replace: bool = True) -> int:
        """A member's state when it began sharing (wire chunks back to back): its per-flow entries
        join the store, its multi-flow entries replace what this member held of it (or, not
        `replace`: state a put wrote there, its multi-flow entries join)."""
        chunks = _chunks(blob)
        n = 0
        with self.lock:
            multi = Tables(self.kind) if replace else self._mine(src)
            snap = Tables.from_chunks(chunks, self.kind) if chunks else Tables(self.kind)
            for name, d in snap.data.items():
                (self.flows if name in self.per_flow else multi).data[name].update(d)
                if name in self.per_flow:
                    self.owner.update(((name, k), src) for k in d)
                n += len(d)
            self.multi[src] = multi
            if replace:
                self.based[src] = time.time()
            self.counts["bases"] += 1
            self.counts["bytes"] += len(blob)
        return n

    def forget(self, keyset: set[bytes]) -> int:
        """Flows that left the cluster (a move across it; raw 16-byte keys, each direction's):
        their per-flow entries, stamps and owners, and every sender's multi-flow entries that
        name them (a NAT port's owner). Returns the entries dropped."""
        n = 0
        with self.lock:
            for name in self.per_flow:
                d = self.flows.data[name]
                for k in keyset & d.keys():
                    del d[k]
                    self.owner.pop((name, k), None)
                    n += 1
            for t in self.multi.values():
                for name in self.by_flow:
                    d = t.data[name]
                    for k in [k for k, v in d.items() if bytes(v) in keyset]:
                        del d[k]
                        n += 1
            for k in keyset:
                self.stamps.pop(k, None)
            self.counts["forgotten"] += n
        return n

    def select(self, flt: Filter, src: str, keyset: set | None = None) -> list[wire.Chunk]:
        """The replicas `flt` selects of `src`'s flows: their per-flow entries (the last member
        that shared an entry holds its flow), and `src`'s multi-flow entries; with `keyset` (the
        flows src holds, raw keys) only those flows, whoever shared them last: a replica of a
        flow that has left the cluster since is never taken for one src holds."""
        with self.lock:
            mine = Tables(self.kind)
            for name in self.per_flow:
                mine.data[name] = dict(self.flows.data[name]) if keyset is not None else \
                    {k: v for k, v in self.flows.data[name].items() if self.owner.get((name, k)) == src}
            # a multi-flow entry that names its flow (a NAT port's owner) is that flow's, whoever
            # sent it: with keyset from every sender (src's last, so its values win); a host's
            # (key_host) is src's alone
            senders = [s for s in self.multi if s != src] if keyset is not None else []
            for sender in senders + ([src] if src in self.multi else []):
                for name, d in self.multi[sender].data.items():
                    if name not in self.per_flow and (sender == src or name in self.by_flow):
                        mine.data[name].update(d)
            chunks = [c for c in mine.chunks() if c.count]
        return ops.select_chunks(chunks, flt, keyset)

    def entries(self) -> dict:
        with self.lock:
            return {"per_flow": sum(len(d) for n, d in self.flows.data.items() if n in self.per_flow),
                    "multi_flow": {s: t.entries() for s, t in self.multi.items()},
                    "based": dict(self.based)}


def _name(u) -> str:
    return SCHEMAS[u.table].name


def chunks_blob(chunks) -> bytes:
    return b"".join(bytes(p) for c in chunks for p in wire.encode_chunk(c))


def blob_pieces(chunks, max_bytes: int) -> list[bytes]:
    """chunks_blob, cut into blobs of at most about max_bytes (a chunk is split by entries), so
    each fits in one request."""
    out, cur, size = [], [], 0
    for c in chunks:
        per = c.key_size + c.value_size * c.ncpu
        step = max(1, max_bytes // per)
        for lo in range(0, c.count, step):
            hi = min(c.count, lo + step)
            part = wire.Chunk(c.table, c.scope, c.kind, hi - lo, c.key_size, c.value_size, c.ncpu, c.layout,
                              bytes(c.keys[lo * c.key_size:hi * c.key_size]),
                              bytes(c.values[lo * c.value_size * c.ncpu:hi * c.value_size * c.ncpu]), c.seq)
            if cur and size + part.nbytes > max_bytes:
                out.append(chunks_blob(cur))
                cur, size = [], 0
            cur.append(part)
            size += part.nbytes
    if cur:
        out.append(chunks_blob(cur))
    return out


def _chunks(blob) -> list[wire.Chunk]:
    r = wire.Reader(io.BytesIO(bytes(blob)))
    out = []
    while (f := r.frame()) is not None:
        kind, c = f
        if kind != wire.CHUNK:
            raise wire.WireError(f"a replica base holds state chunks, not frames of kind {kind}")
        out.append(c)
    return out
