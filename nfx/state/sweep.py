"""What a sharing instance (issue 13, nfx/agent/sharer.py) last shared of each entry, and what its
maps hold beyond that. The NF writes a shared record only at a flow's batch boundary (and when it
makes or ends an entry), so the packets of a flow after its last boundary are in the maps only:
a sweep finds the entries that changed since they were last shared and have gone idle, and a
move's flush finds the moved flows' entries the same way. Both give whole entries (full-mask
statelets, statelets.entry_update): values are absolute, so they land on a replica exactly.

What was shared is kept compactly: per table, raw key -> the entry's order counter (pkts), which
only grows within an incarnation; an entry whose pkts differs from it has changed (a re-created
entry counts from 1 again, and differs too)."""
import ctypes as ct
import time
from collections.abc import Iterable

import numpy as np

from .. import layout as L
from .ops import _member
from .statelets import SCHEMAS, Schema, Update, entry_update
from .tables import tables

SET, DEL = int(L.StOp.SET), int(L.StOp.DEL)
LAST_SEEN = {"nat_fwd": "last_seen_ns", "nat_rev": "last_seen_ns", "ids_flows": "last_ns"}
HOSTS = "ids_hosts"             # multi-flow counters of many flows, with no time of their own
COARSE_NS = 20_000_000          # NAT stamps last_seen with the coarse clock: a jiffy or so behind
PRUNE_EVERY = 25                # sweeps between dropping what was shared of entries gone from the maps


def now_ns() -> int:
    """The datapath's clock (bpf_ktime_get_ns: CLOCK_MONOTONIC)."""
    return time.monotonic_ns()


class SharedLog:
    """Per table of `kind` that a sweep reads (per-flow tables, IDS hosts): raw key -> pkts last
    shared. `changed_*` return {flow key: [Update]} (hosts under ZERO_FLOW)."""
    ZERO_FLOW = bytes(16)

    def __init__(self, kind: str):
        self.kind = kind
        names = [t.name for t in tables(kind, ("per-flow",))] + ([HOSTS] if kind == "ids" else [])
        self.schemas: dict[str, Schema] = {n: s for s in SCHEMAS.values() for n in names if s.name == n}
        self.sent: dict[int, dict[bytes, int]] = {s.table: {} for s in self.schemas.values()}
        self.hosts_seen: dict[bytes, int] = {}     # host key -> its pkts at the last sweep
        self.swept_ns = 0                          # when the last sweep read the maps
        self.sweeps = 0

    # ---- what went out ----
    def note(self, ups: Iterable[Update]) -> None:
        """Statelets that went to the members (a batch)."""
        for u in ups:
            d = self.sent.get(u.table)
            if d is None:
                continue
            if u.op == DEL:
                d.pop(u.key, None)
                continue
            s = SCHEMAS[u.table]
            i, at = 0, None
            for f in s.fields:
                if u.mask >> f.bit & 1:
                    if f.name == s.order:
                        at = i
                    i += f.words
            if at is not None:
                d[u.key] = u.vals[at]

    def seed(self, chunks) -> None:
        """What the members got as a base (wire chunks of this instance's maps): shared already."""
        by_name = {s.name: s for s in self.schemas.values()}
        for c in chunks:
            s = by_name.get(c.table)
            if s is None or not c.count:
                continue
            slot = c.value_size * c.ncpu
            off = getattr(s.value, s.order).offset
            vb = np.frombuffer(c.values, dtype=np.uint8, count=c.count * slot).reshape(c.count, slot)
            pkts = vb[:, off:off + 8].copy().view("<u8").reshape(c.count)
            kb = bytes(c.keys)
            ks = c.key_size
            self.sent[s.table].update((kb[i * ks:(i + 1) * ks], int(p)) for i, p in enumerate(pkts))

    def entries(self) -> int:
        return sum(map(len, self.sent.values()))

    # ---- what the maps hold beyond it ----
    def _read(self, nf, s: Schema):
        """(keys as an n x key_size byte array, values as n x slot bytes, pkts, last seen or None)."""
        m = nf.maps[s.name]
        n, keys, vals = m.export()
        ksz, ssz = ct.sizeof(m.Key), ct.sizeof(m.Slot)
        kb = np.frombuffer(keys, dtype=np.uint8, count=n * ksz).reshape(n, ksz)
        vb = np.frombuffer(vals, dtype=np.uint8, count=n * ssz).reshape(n, ssz)

        def col(name):
            off = getattr(s.value, name).offset
            return vb[:, off:off + 8].copy().view("<u8").reshape(n)
        last = LAST_SEEN.get(s.name)
        return kb, vb, col(s.order), col(last) if last else None

    def _update(self, s: Schema, kb, vb, i: int) -> Update:
        return entry_update(s, kb[i].tobytes(), s.value.from_buffer_copy(vb[i].tobytes()))

    def changed_idle(self, nf, idle_ns: int, force: bool = False) -> dict[bytes, list[Update]]:
        """The entries that changed since they were last shared and have been idle for idle_ns
        (force: every changed entry). An entry already idle at the previous sweep was decided
        then; hosts count as idle when their pkts did not move since the previous sweep."""
        t = now_ns()
        since = self.swept_ns - idle_ns - COARSE_NS
        out: dict[bytes, list[Update]] = {}
        for name, s in self.schemas.items():
            kb, vb, pkts, last = self._read(nf, s)
            sent = self.sent[s.table]
            if name == HOSTS:
                seen, self.hosts_seen = self.hosts_seen, {}
                for i in range(len(pkts)):
                    k, p = kb[i].tobytes(), int(pkts[i])
                    self.hosts_seen[k] = p
                    if sent.get(k) != p and (force or seen.get(k) == p):
                        out.setdefault(self.ZERO_FLOW, []).append(self._update(s, kb, vb, i))
                continue
            if force:
                idx = range(len(pkts))
            else:
                age = t - last.astype(np.int64)
                idx = np.flatnonzero((age >= idle_ns) & (last.astype(np.int64) >= since))
            for i in idx:
                k = kb[i].tobytes()
                if sent.get(k) != int(pkts[i]):
                    out.setdefault(k[:16], []).append(self._update(s, kb, vb, i))
        self.swept_ns = t
        self.sweeps += 1
        if self.sweeps % PRUNE_EVERY == 0:
            self._prune(nf)
        return out

    def changed_flows(self, nf, flows: set) -> dict[bytes, list[Update]]:
        """The entries of `flows` (raw keys, each direction's) that changed since they were last
        shared, and (IDS) the hosts those flows come from, under the first such flow."""
        out: dict[bytes, list[Update]] = {}
        saddrs: dict[bytes, bytes] = {}
        for f in sorted(flows):
            saddrs.setdefault(f[:4], f)                # struct nfx_flow_key starts with saddr
        for name, s in self.schemas.items():
            kb, vb, pkts, _ = self._read(nf, s)
            sent = self.sent[s.table]
            idx = range(len(pkts)) if name == HOSTS else np.flatnonzero(_member(kb[:, :16], flows))
            for i in idx:
                k = kb[i].tobytes()
                owner = saddrs.get(k[:4]) if name == HOSTS else k
                if owner is not None and sent.get(k) != int(pkts[i]):
                    out.setdefault(owner, []).append(self._update(s, kb, vb, i))
        return out

    def _prune(self, nf) -> None:
        for name, s in self.schemas.items():
            m = nf.maps[s.name]
            n, keys, _ = m.export()
            ksz = ct.sizeof(m.Key)
            kb = bytes(memoryview(keys).cast("B")[:n * ksz])
            live = {kb[i:i + ksz] for i in range(0, len(kb), ksz)}
            d = self.sent[s.table]
            for k in [k for k in d if k not in live]:
                del d[k]
