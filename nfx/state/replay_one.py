"""Statelet replay one statelet at a time: the rules (`_step`), the snapshot they replay onto
(`Tables`), an instance's maps as a store (`_MapStore`), and `apply_slow`, the reference that
nfx/state/fastapply.py (the bulk replay that nfx/state/replay.py's `apply` uses) is tested
against. What the rules are and why they are exact: nfx/state/replay.py."""
import ctypes as ct
import time
from collections.abc import Iterable
from typing import NamedTuple

from .. import layout as L
from ..errors import BadInput, NotFound
from . import ops, wire
from .statelets import (BY_NAME, MAX, OR, SCHEMAS, STAMP, STATE_SCOPES, WHOLE, Schema, flow_of, inc_tag,
                        updates)
from .tables import table


# ---- replay targets -------------------------------------------------------------------------------
def schema_of(c: wire.Chunk, kind: str) -> Schema | None:
    """The statelet schema of a chunk of a `kind` snapshot, None for a table statelets do not
    mirror; a chunk of another NF kind, or whose entries are not the schema's size, is refused."""
    s = BY_NAME.get(c.table)
    if c.kind != kind:
        raise BadInput(f"chunk of {c.kind} state in a {kind} snapshot")
    if s is None or s.kind != kind:
        return None
    if (c.key_size, c.value_size, c.ncpu) != (ct.sizeof(s.key), ct.sizeof(s.value), 1):
        raise BadInput(f"chunk of {c.table}: entries of {c.key_size}+{c.value_size}x{c.ncpu} "
                       f"bytes, statelets know {ct.sizeof(s.key)}+{ct.sizeof(s.value)}")
    return s


class Tables:
    """An NF's per-flow and multi-flow state as dicts (raw key -> value struct): a snapshot that
    statelets replay onto. Chunks of other tables (all-flows) pass through unchanged."""

    def __init__(self, kind: str):
        self.kind = kind
        self.data: dict[str, dict[bytes, object]] = {s.name: {} for s in SCHEMAS.values() if s.kind == kind}
        self.other: list[wire.Chunk] = []

    @classmethod
    def from_chunks(cls, chunks: Iterable[wire.Chunk], kind: str | None = None) -> "Tables":
        chunks = list(chunks)
        kind = kind or (chunks[0].kind if chunks else None)
        if kind is None:
            raise BadInput("no chunks and no NF kind: cannot tell which tables a snapshot holds")
        self = cls(kind)
        for c in chunks:
            s = schema_of(c, kind)
            if s is None:
                self.other.append(c)
                continue
            d = self.data[c.table]
            kb, vb, ks, vs = bytes(c.keys), bytes(c.values), c.key_size, c.value_size
            for i in range(c.count):
                d[kb[i * ks:(i + 1) * ks]] = s.value.from_buffer_copy(vb, i * vs)
        return self

    @classmethod
    def from_nf(cls, nf, scopes=STATE_SCOPES) -> "Tables":
        return cls.from_chunks(ops.export(nf, scopes), nf.kind)

    def chunks(self) -> list[wire.Chunk]:
        layout = L.layout_hash(self.kind)
        out = []
        for name, d in self.data.items():
            s = BY_NAME[name]
            scope = table(self.kind, name).scope
            keys = b"".join(d.keys())
            vals = b"".join(bytes(v) for v in d.values())
            out.append(wire.Chunk(name, scope, self.kind, len(d), ct.sizeof(s.key), ct.sizeof(s.value), 1,
                                  layout, keys, vals))
        out += self.other
        for i, c in enumerate(out):
            c.seq = i
        return out

    def entries(self) -> int:
        return sum(map(len, self.data.values()))

    # the store interface apply() uses
    def _get(self, s: Schema, key: bytes):
        return self.data[s.name].get(key)

    def _put(self, s: Schema, key: bytes, v) -> None:
        self.data[s.name][key] = v

    def _delete(self, s: Schema, key: bytes) -> bool:
        return self.data[s.name].pop(key, None) is not None

    def _flush(self) -> None:
        pass


class _MapStore:
    """Replay straight onto an instance's maps: entries are read once, changed in memory, and
    written back in batches (deletions one by one) at the end."""

    def __init__(self, nf):
        self.nf = nf
        self.over: dict[str, dict[bytes, object]] = {}
        self.existed: dict[str, set] = {}

    def _map(self, s: Schema):
        m = self.nf.maps.get(s.name)
        if m is None:
            raise NotFound(f"instance {getattr(self.nf, 'instance', '?')} has no map {s.name}")
        return m

    def _get(self, s: Schema, key: bytes):
        o = self.over.setdefault(s.name, {})
        if key in o:
            return o[key]
        v = self._map(s).get(s.key.from_buffer_copy(key))
        o[key] = v
        if v is not None:
            self.existed.setdefault(s.name, set()).add(key)
        return v

    def _put(self, s: Schema, key: bytes, v) -> None:
        self.over.setdefault(s.name, {})[key] = v

    def _delete(self, s: Schema, key: bytes) -> bool:
        had = self._get(s, key) is not None
        self.over[s.name][key] = None
        return had

    def _flush(self) -> None:
        for name, o in self.over.items():
            s = BY_NAME[name]
            m = self._map(s)
            for k in (k for k, v in o.items() if v is None and k in self.existed.get(name, ())):
                m.delete(s.key.from_buffer_copy(k))
            sets = [(k, v) for k, v in o.items() if v is not None]
            if sets:
                n = len(sets)
                ka = (s.key * n)(*(s.key.from_buffer_copy(k) for k, _ in sets))
                va = (s.value * n)(*(v.value if isinstance(v, ct._SimpleCData) else v for _, v in sets))
                m.update_batch(ka, va, n)
        self.over.clear()
        self.existed.clear()


# ---- replay ----------------------------------------------------------------------------------------
class _Plan(NamedTuple):
    setters: tuple           # (attribute or None, word index, flow, merge)
    inc: int                 # word index of the incarnation field, -1 if not carried
    order: int               # word index of the order field, -1 if not carried


_PLANS: dict[tuple[int, int], _Plan] = {}


def _plan(s: Schema, mask: int) -> _Plan:
    p = _PLANS.get((s.table, mask))
    if p is None:
        setters, idx, at = [], 0, {}
        for f in s.fields:
            if mask >> f.bit & 1:
                setters.append((f.name, idx, f.flow, f.merge))
                at[f.name] = idx
                idx += f.words
        p = _PLANS[(s.table, mask)] = _Plan(tuple(setters), at.get(s.incarnation, -1), at.get(s.order, -1))
    return p


def _word(s: Schema, flow: bool, vals: tuple, i: int):
    return flow_of(vals[i:i + 2]) if flow else vals[i]


def _fresh(s: Schema, plan: _Plan, vals: tuple):
    """A value made from the carried fields alone (zeroes elsewhere)."""
    v = s.value() if s.fields[0].name else None
    for name, i, flow, merge in plan.setters:
        x = _word(s, flow, vals, i)
        if name is None:
            return x if flow else s.value(x)
        setattr(v, name, x)
    return v if v is not None else s.value()


def _step(store, s: Schema, u, r: dict, pending: dict) -> None:
    """One statelet onto `store` (the rules in apply's docstring)."""
    cur = store._get(s, u.key)
    cur_inc = inc_tag(getattr(cur, s.incarnation)) if cur is not None and s.incarnation else 0
    if u.op != L.StOp.SET:
        if cur is None:
            r["absent_deletes"] += 1
            if pending.get((u.table, u.key)) == u.inc:
                del pending[(u.table, u.key)]     # an incarnation that died: nothing to miss
        elif u.inc != cur_inc:
            r["stale"] += 1                   # another incarnation under the same key: keep it
        else:
            store._delete(s, u.key)
            r["deleted"] += 1
        return
    plan = _plan(s, u.mask)
    vals = u.vals
    full = u.mask == s.full_mask
    if cur is None or s.fields[0].merge == WHOLE:
        if cur is None and not full:
            pending[(u.table, u.key)] = u.inc
            return
        store._put(s, u.key, _fresh(s, plan, vals))
        r["applied"] += 1
        return
    if u.inc != cur_inc:
        newer_inc = (vals[plan.inc] > getattr(cur, s.incarnation)) if plan.inc >= 0 else u.inc > cur_inc
        if newer_inc and full:                # a later incarnation, whole: it replaces the entry
            store._put(s, u.key, _fresh(s, plan, vals))
            r["applied"] += 1
        elif newer_inc:                       # a later incarnation whose creation we never saw
            pending[(u.table, u.key)] = u.inc
        else:
            r["stale"] += 1
        return
    newer = plan.order < 0 or vals[plan.order] >= getattr(cur, s.order)
    for name, i, flow, merge in plan.setters:
        if merge == MAX:
            if vals[i] > getattr(cur, name):
                setattr(cur, name, vals[i])
        elif merge == OR:
            setattr(cur, name, getattr(cur, name) | vals[i])
        elif newer:
            setattr(cur, name, _word(s, flow, vals, i))
    store._put(s, u.key, cur)
    r["applied" if newer else "stale"] += 1


COUNTS = ("applied", "stale", "deleted", "absent_deletes", "orphans", "statelets", "records")


def apply_slow(target, statelets, report: dict | None = None) -> dict:
    """apply(), one statelet at a time: the reference implementation of the rules."""
    if isinstance(target, (list, tuple)):
        target = Tables.from_chunks(target)
    store = target if isinstance(target, Tables) else _MapStore(target)
    kind = target.kind if isinstance(target, Tables) else getattr(target, "kind", None)
    r = report if report is not None else {}
    for k in COUNTS:
        r.setdefault(k, 0)
    t0 = time.perf_counter()
    records = statelets if isinstance(statelets, list) else list(statelets)
    r["records"] += sum(1 for x in records if isinstance(x, (bytes, bytearray, memoryview)))
    pending: dict[tuple[int, bytes], int] = {}    # partial statelets with no entry: (table, key) -> inc
    for u in updates(records):
        r["statelets"] += 1
        if u.table == STAMP.table:
            continue                          # names no map: nothing to replay
        s = SCHEMAS[u.table]
        if kind is not None and s.kind != kind:
            raise BadInput(f"a {s.kind} statelet ({s.name}) for a {kind} instance")
        _step(store, s, u, r, pending)
    store._flush()
    r["orphans"] += len(pending)
    r["apply_s"] = r.get("apply_s", 0.0) + time.perf_counter() - t0
    if isinstance(store, Tables):
        r["tables"] = store
    return r
