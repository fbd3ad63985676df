"""Late locking (DiST's ll) at a move's source: the flows are held back group by group, each
group just before its state is read, so a flow's packets wait only while its own group's state
is on its way (with early release at the destination).

A group is a set of flows, by the owning flow's key (a NAT flow's outside tuple goes with it),
made from one read of the per-flow tables before anything is held (numpy, no per-key Python).
Marking a group is one batch update of keys ready in memory; reading its state is a lookup of
its own keys (ops.read_keys, through the tables' keyed readers: up to 256 keys a syscall) where
that is cheaper than a walk of the tables: a batch export walks every bucket, 8-15 ms under load
at 10k flows, whatever the group's size.

As published, a group is locked as its state goes out, ahead of the destination's puts. With
pc (nfx's option, Pace) the next group waits until the last one is released at the
destination, and groups are smaller: a held packet waits for its own group alone."""
import ctypes as ct
import threading
import time

import numpy as np

from .. import layout as L
from ..filter import Filter
from ..state import ops
from ..state.tables import table, tables
from .settle import settle

# as published (groups marked ahead of their puts): few groups, each one put the destination
# applies and releases while the next is read
GROUP_FLOWS, MAX_GROUPS = 512, 8
# pc (Pace): small groups, each one round trip; ~320 lookups a group, under 1 ms
PACED_GROUP_FLOWS, PACED_MAX_GROUPS = 160, 256
BUCKETS_PER_LOOKUP = 180     # a group's keys are looked up one by one when that is cheaper


def _owners(kind: str, c) -> tuple[np.ndarray, np.ndarray] | None:
    """A per-flow chunk's keys (n x key size) and the owning flow of each entry (n x 16)."""
    t = table(kind, c.table)
    if t is None or t.scope != "per-flow" or c.count == 0:
        return None
    keys = np.frombuffer(c.keys, dtype=np.uint8, count=c.count * c.key_size).reshape(c.count, c.key_size)
    if t.select == "key_flow":
        return keys, keys[:, :16]
    slot = c.value_size * c.ncpu
    vals = np.frombuffer(c.values, dtype=np.uint8, count=c.count * slot).reshape(c.count, slot)
    return keys, vals[:, :16]


def _group_of(owners: np.ndarray, n_groups: int) -> np.ndarray:
    """A group number per owning flow key: a multiplicative hash of its two 64-bit halves."""
    w = np.ascontiguousarray(owners).view("<u8")
    h = (w[:, 0] ^ (w[:, 1] * np.uint64(0x9E3779B97F4A7C15))) * np.uint64(0xC2B2AE3D27D4EB4F)
    return ((h >> np.uint64(33)) % np.uint64(n_groups)).astype(np.int64)


def groups(kind: str, per_flow_chunks, paced: bool = False) -> tuple[list, set]:
    """[(the group's keys to mark, as a FlowKey array; {table: its keys there, back to back};
    its owners)], and every owner (16-byte keys: the flows whose state the groups carry).
    Paced (pc): smaller groups."""
    parts = [(c.table, *p) for c in per_flow_chunks if (p := _owners(kind, c)) is not None]
    if not parts:
        return [], set()
    ob = b"".join(np.ascontiguousarray(o).tobytes() for _, _, o in parts)
    every = {ob[i:i + 16] for i in range(0, len(ob), 16)}
    size, most = (PACED_GROUP_FLOWS, PACED_MAX_GROUPS) if paced else (GROUP_FLOWS, MAX_GROUPS)
    n_groups = max(1, min(most, -(-len(every) // size)))
    gids = [_group_of(o, n_groups) for _, _, o in parts]
    out = []
    for g in range(n_groups):
        marks, reads, owners = [], {}, []
        for (name, keys, own), gid in zip(parts, gids):
            sel = gid == g
            mine = keys[sel]
            if len(mine):
                marks.append(np.ascontiguousarray(mine[:, :16]).tobytes())
                reads[name] = reads.get(name, b"") + np.ascontiguousarray(mine).tobytes()
                owners.append(np.ascontiguousarray(own[sel]).tobytes())
        if reads:
            kb, ob = b"".join(marks), b"".join(owners)
            out.append(((L.FlowKey * (len(kb) // 16)).from_buffer_copy(kb), reads,
                        {ob[i:i + 16] for i in range(0, len(ob), 16)}))
    return out, every


def _by_keys(nf, reads: dict) -> bool:
    """Read a group by its keys, or walk the tables (one batch export, the group picked out)?
    A lookup costs about what walking BUCKETS_PER_LOOKUP buckets does (2 us against ~11 ns a
    bucket, measured on this VM), and a walk visits every bucket of every per-flow table."""
    lookups = sum(len(raw) // ct.sizeof(nf.maps[name].Key) for name, raw in reads.items())
    buckets = sum(nf.maps[t.name].max_entries for t in tables(nf.kind, ("per-flow",)))
    return lookups * BUCKETS_PER_LOOKUP < buckets


class Pace:
    """pc, nfx's option beside DiST's ll,er: the next group, and after the last group the hold
    of new flows, is marked only once every chunk yielded so far is in and released at the
    destination (its put acknowledged). As published,
    a group is locked as its state is sent; marked ahead, groups pile up at a destination that
    applies and releases one put after another, and each group's packets wait for every group
    before it (holds of 120-400 ms at 10k flows, and seconds with groups as small as pc's)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.cv = threading.Condition()
        self.sent = self.acked = 0

    def count(self, chunks):
        for c in chunks:
            with self.cv:
                self.sent += 1
            yield c

    def done(self, reply, chunks) -> None:
        with self.cv:
            self.acked += len(chunks)
            self.cv.notify_all()

    def wait(self) -> None:
        with self.cv:
            if not self.cv.wait_for(lambda: self.acked >= self.sent, self.timeout):
                raise TimeoutError(f"late locking: the destination did not acknowledge a group's state "
                                   f"within {self.timeout:g} s")


def export_locked(session, per_flow_chunks, flt: Filter, scopes, peer_slot: int = 0, stats: dict | None = None,
                  pace: Pace | None = None):
    """The state of the flows in `per_flow_chunks` (read before anything was held) in groups,
    each group marked (held back or passed on, by the session's role) just before its per-flow
    state is read; then flows born meanwhile, which the filter holds by then; then the other
    scopes (a NAT's ports: the destination allocates from its own slice, so a flow released
    before its port arrives cannot collide). Yields chunks as they are read. Without `pace` the
    next group is marked before this one is read (reading gives an XDP run that missed a mark
    the time to finish); with it, a group is marked only once the one before is released."""
    nf = session.nf
    per_flow = "per-flow" in scopes
    rest = tuple(s for s in scopes if s != "per-flow")
    plan, every = groups(nf.kind, per_flow_chunks, paced=pace is not None) if per_flow else ([], set())
    # the keyed readers before anything is held: a first build compiles
    for name in {name for _, reads, _ in plan if _by_keys(nf, reads) for name in reads}:
        nf.maps[name].prepare_keyed_reads()
    steps = [lambda k=k: session.mark(k, peer_slot) for k, *_ in plan] + [lambda: session.hold_new(flt, peer_slot)]
    marked = [0.0] * len(steps)

    def mark(i):
        steps[i]()
        marked[i] = time.perf_counter()

    def settled(i):
        settle(nf, marked[i])
    if pace is None:
        mark(0)
    for i, (_, reads, owners) in enumerate(plan):
        if pace is None:
            mark(i + 1)
        else:
            pace.wait()
            mark(i)
        settled(i)
        if not _by_keys(nf, reads):
            yield from ops.export(nf, ("per-flow",), flt, stats=stats, keyset=owners)
            continue
        t0 = time.perf_counter()
        for name, raw in reads.items():
            c = ops.read_keys(nf, name, raw)
            if stats is not None:
                stats["export_s"] = stats.get("export_s", 0.0) + time.perf_counter() - t0
            if c is not None:
                yield c
            t0 = time.perf_counter()
    if pace is not None:
        # the last group released before the new flows are held and the tables walked: that
        # walk keeps this CPU busy for 8-15 ms, and the last group's puts, queued on it to the
        # destination, went only after it (its packets held 13-18 ms, the worst of the move)
        pace.wait()
        mark(len(plan))
    settled(len(plan))
    if per_flow:
        # flows born since the move began: the filter holds them now
        yield from ops.export(nf, ("per-flow",), flt, stats=stats, skip=every)
    if rest:
        yield from ops.export(nf, rest, flt, stats=stats)
