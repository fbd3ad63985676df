"""Statelet replay in bulk: the rules of replay.apply (nfx/state/replay.py), applied to a whole
batch of statelets per table with numpy instead of one statelet at a time.

Per table, a batch's statelets are grouped by key (ring order kept inside a group). Values are
absolute, so a group collapses to one write: counters take the max, flag sets the OR, and each
other field the value of the last statelet whose pkts is not below the running max of pkts
before it (the entry's and the group's earlier ones), which is what the one-by-one rules give.
Groups on that path: all SETs of one incarnation onto an entry of that incarnation (A), or the
same after a whole SET that creates the entry (B); whole-value tables (nat_ports,
ids_hostports) take the group's last op. Anything else (a deletion or a change of incarnation
inside the group, a partial statelet before the creation) goes through replay_one._step, one
statelet at a time, on the same in-memory entries: rare, and exact by construction.

The entries live in a Mirror per table (nfx/state/mirror.py: numpy rows, a dict from key bytes
to row).
StreamApplier(nf) keeps one for an instance: install(chunks) writes a snapshot into the maps
and the mirror; apply(batch) replays a batch and writes only the entries it changed (one batch
update, one batch delete per table), without reading the maps back. That is right while the
destination's datapath leaves those entries alone (it processes none of the moving flows until
the move ends); an entry the datapath also updates (e.g. an IDS host that local flows touch)
must be replayed with replay.apply(nf, ...), which reads the touched entries first."""
import time

import numpy as np

from .. import layout as L
from ..errors import BadInput, NotFound
from . import ops
from .replay_one import COUNTS, Tables, _step
from .mirror import INC_MASK, OFFS, Mirror, _raw
from .statelets import BY_NAME, MAX, OR, SCHEMAS, STAMP, WHOLE, Schema, Update, encode, from_dict
from .stbatch import Batch, parse_records

SET, DEL = int(L.StOp.SET), int(L.StOp.DEL)


def _seg_cummax(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Running max of v within runs of equal g (g sorted), by doubling."""
    v = v.copy()
    step = 1
    while step < len(v):
        same = g[step:] == g[:-step]
        if not same.any():
            break
        v[step:] = np.maximum(v[step:], np.where(same, v[:-step], 0))
        step *= 2
    return v


_PRIME = np.uint64(0x9E3779B97F4A7C15)


def _group(W: np.ndarray, st: np.ndarray, nk: int):
    """Statelets grouped by key, ring order kept inside a group: (order, first of each group in
    that order, the key words in that order). One unstable sort of (key hash, position), whose
    positions are unique, instead of a stable sort of the keys; a hash collision (two keys in
    one run) is detected and the keys sorted exactly instead."""
    m = len(st)
    k = [W[st + 1 + j] for j in range(nk)]
    pbits = max(1, int(m).bit_length())
    h = k[0] * _PRIME
    if nk == 2:
        h = (h ^ (h >> np.uint64(29))) + k[1] * _PRIME
        h = h ^ (h >> np.uint64(32))
    comp = np.sort(((h >> np.uint64(pbits)) << np.uint64(pbits)) | np.arange(m, dtype=np.uint64))
    order = (comp & np.uint64((1 << pbits) - 1)).astype(np.int64)
    hs = comp >> np.uint64(pbits)
    ks = [x[order] for x in k]
    first = np.ones(m, bool)
    first[1:] = hs[1:] != hs[:-1]
    same = np.ones(m - 1, bool) if m else np.ones(0, bool)
    for x in ks:
        same &= x[1:] == x[:-1]
    if (~first[1:] & ~same).any():             # a collision: sort the keys themselves
        order = np.lexsort(tuple(reversed(k))) if nk == 2 else np.argsort(k[0], kind="stable")
        ks = [x[order] for x in k]
        first = np.ones(m, bool)
        if m:
            diff = np.zeros(m - 1, bool)
            for x in ks:
                diff |= x[1:] != x[:-1]
            first[1:] = diff
    return order, first, np.stack(ks, axis=1)


def _gather(W: np.ndarray, at: np.ndarray, flow: bool) -> np.ndarray:
    return np.stack([W[at], W[at + 1]], axis=1) if flow else W[at]


def _apply_table(mir: Mirror, b: Batch, sel: np.ndarray, r: dict, pending: dict) -> None:
    s, t, nk, W = mir.s, mir.s.table, mir.s.nkey, b.W
    st, op, mask, inc = b.start[sel], b.op[sel], b.mask[sel], b.inc[sel]
    m = len(sel)
    order, first, kw = _group(W, st, nk)
    gstart = np.flatnonzero(first)
    gs = np.cumsum(first) - 1                            # group of each statelet, in key order
    kb = kw[gstart]
    uk = np.ascontiguousarray(kb.view(np.uint8).reshape(len(gstart), 8 * nk)[:, :mir.ks]).view(f"V{mir.ks}").ravel()
    keys = uk.tolist()
    rows = mir.lookup(keys)
    last = np.append(gstart[1:] - 1, m - 1)
    vat = st + 1 + nk                                    # each statelet's first value word
    if s.fields[0].merge == WHOLE:
        is_set = op[order] == SET
        prev_set = np.zeros(m, bool)
        prev_set[1:] = is_set[:-1]
        before = np.where(first, (rows >= 0)[gs], prev_set)
        dels = ~is_set
        r["applied"] += int(is_set.sum())
        r["deleted"] += int((dels & before).sum())
        r["absent_deletes"] += int((dels & ~before).sum())
        fin = order[last]
        keep = op[fin] == SET
        if keep.any():
            v = np.zeros(int(keep.sum()), mir.dt)
            v["value"] = _gather(W, vat[fin[keep]], s.fields[0].flow)
            mir.put(uk[keep], rows[keep], v)
        drop = ~keep & (rows >= 0)
        if drop.any():
            mir.remove([keys[i] for i in np.flatnonzero(drop)], rows[drop])
        return
    full = s.full_mask
    mo, inco = mask[order], inc[order]
    is_del = op[order] == DEL
    ok = inco.copy()                                     # the incarnation the values name, if carried
    if s.incarnation:
        ibit = next(f.bit for f in s.fields if f.name == s.incarnation)
        io = OFFS[t][ibit][mo]
        carried = io >= 0
        ok[carried] = (W[vat[order][carried] + io[carried]] >> np.uint64(L.STATELET_INC_SHIFT)).astype(np.int64) & INC_MASK
    ginc = inco[gstart]
    mixed = is_del | (inco != ginc[gs]) | (ok != inco)   # a deletion, another incarnation
    uniform = np.ones(len(keys), bool)
    uniform[gs[mixed]] = False
    have = rows >= 0
    base_inc = np.zeros(len(keys), np.int64)
    if s.incarnation and have.any():
        base_inc[have] = (mir.vals[s.incarnation][rows[have]] >> np.uint64(L.STATELET_INC_SHIFT)).astype(np.int64) & INC_MASK
    case_a = uniform & have & (base_inc == ginc)
    case_b = uniform & ~have & (mo[gstart] == full)
    # the rest, one statelet at a time
    slow = ~(case_a | case_b)
    if slow.any():
        for p in np.flatnonzero(slow[gs]).tolist():
            i = order[p]
            a = vat[i]
            u = Update(t, int(op[i]), keys[gs[p]], int(mask[i]), tuple(W[a:a + b.nval[sel[i]]].tolist()), int(inc[i]))
            _step(mir, s, u, r, pending)
    ab = case_a | case_b
    if not ab.any():
        return
    base = np.zeros(len(keys), mir.dt)
    _raw(base)[case_a] = _raw(mir.vals)[rows[case_a]]
    if case_b.any():
        fb = order[gstart[case_b]]
        for f in s.fields:
            base[f.name][case_b] = _gather(W, vat[fb] + OFFS[t][f.bit][full], f.flow)
    take = ab[gs] & ~(first & case_b[gs])
    M = order[take]
    gm = gs[take]
    mm, am = mask[M], vat[M]
    fm = np.ones(len(M), bool)
    fm[1:] = gm[1:] != gm[:-1]
    obit = next(f.bit for f in s.fields if f.name == s.order)
    oo = OFFS[t][obit][mm]
    has_o = oo >= 0
    ov = np.where(has_o, W[am + np.maximum(oo, 0)], np.uint64(0))
    excl = np.zeros(len(M), np.uint64)
    if len(M):
        excl[1:] = _seg_cummax(ov, gm)[:-1]
    excl[fm] = 0
    newer = ~has_o | (ov >= np.maximum(base[s.order][gm].astype(np.uint64), excl))
    nnew = int(newer.sum())
    r["applied"] += nnew + int(case_b.sum())
    r["stale"] += len(M) - nnew
    res = base
    for f in s.fields:
        fo = OFFS[t][f.bit][mm]
        c = fo >= 0
        if not c.any():
            continue
        val = _gather(W, am[c] + fo[c], f.flow)
        gc = gm[c]
        if f.merge == MAX or f.merge == OR:
            col = res[f.name].astype(np.uint64)
            (np.maximum if f.merge == MAX else np.bitwise_or).at(col, gc, val)
            res[f.name] = col
        else:
            nw = newer[c]
            gn, vn = gc[nw], val[nw]
            if len(gn):
                lastn = np.ones(len(gn), bool)
                lastn[:-1] = gn[1:] != gn[:-1]
                res[f.name][gn[lastn]] = vn[lastn]
    mir.put(uk[ab], np.where(case_b, -1, rows)[ab], res[ab])


def _to_batch(statelets) -> tuple[Batch, int]:
    """A Batch and the number of ring records (bytes) among `statelets`."""
    if isinstance(statelets, Batch):
        return statelets, statelets.records
    items = statelets if isinstance(statelets, list) else list(statelets)
    recs, nrec = [], 0
    for x in items:
        if isinstance(x, (bytes, bytearray, memoryview)):
            recs.append(bytes(x))
            nrec += 1
        elif isinstance(x, Update):
            recs.append(encode(x))
        elif isinstance(x, dict):
            recs.append(encode(from_dict(x)))
        else:
            raise BadInput(f"not a statelet: {type(x).__name__}")
    return parse_records(recs), nrec


def _replay(mirrors: dict[int, Mirror], kind: str | None, statelets, r: dict, pending: dict) -> None:
    b, nrec = _to_batch(statelets)
    r["records"] += nrec
    r["statelets"] += len(b)
    present = np.flatnonzero(np.bincount(b.table, minlength=256)).tolist() if len(b) else []
    present = [t for t in present if t != STAMP.table]      # names no map: nothing to replay
    for t in present:
        if kind is not None and SCHEMAS[t].kind != kind:
            raise BadInput(f"a {SCHEMAS[t].kind} statelet ({SCHEMAS[t].name}) for a {kind} instance")
    for t in present:
        _apply_table(mirrors[t], b, np.flatnonzero(b.table == t), r, pending)


def _report(report: dict | None) -> dict:
    r = report if report is not None else {}
    for k in COUNTS:
        r.setdefault(k, 0)
    return r


class StreamApplier:
    """Replays a stream of statelet batches (in ring order) onto an instance `nf` whose entries
    of the moving flows it owns (see the module's docstring): install(chunks), then apply(batch)
    per batch; apply() writes the batch's changes into the maps (batch delete, then batch
    update) before it returns. source=True: entries it has not seen are read from the maps
    (what replay.apply(nf, ...) uses)."""

    def __init__(self, nf, source: bool = False):
        self.nf = nf
        self.kind = nf.kind
        self.mirrors: dict[int, Mirror] = {}
        self.maps = {}
        for t, s in SCHEMAS.items():
            if s.kind != self.kind:
                continue
            m = nf.maps.get(s.name)
            if m is None:
                raise NotFound(f"instance {getattr(nf, 'instance', '?')} has no map {s.name}")
            self.maps[t] = m
            self.mirrors[t] = Mirror(s, _map_source(m, s) if source else None)
        self.pending: dict = {}
        self.totals = _report(None)

    def install(self, chunks) -> dict:
        """Write a snapshot (chunks) into the maps and the mirror; other tables' chunks go to the
        maps only. Returns ops.put's result."""
        chunks = list(chunks)
        res = ops.put(self.nf, chunks)
        ok = set(res["applied"])
        for c in chunks:
            s = BY_NAME.get(c.table)
            if s is None or s.table not in self.mirrors or c.seq not in ok or not c.count:
                continue
            mir = self.mirrors[s.table]
            if (c.key_size, c.value_size, c.ncpu) != (mir.ks, mir.dt.itemsize, 1):
                raise BadInput(f"chunk of {c.table}: entries of {c.key_size}+{c.value_size}x{c.ncpu} bytes")
            keys = np.frombuffer(bytes(c.keys), f"V{mir.ks}", c.count)
            rows = mir.put(keys, mir.lookup(keys.tolist()), np.frombuffer(bytes(c.values), mir.dt, c.count), dirty=False)
            mir.in_map[rows] = True
        return res

    def apply(self, statelets, report: dict | None = None) -> dict:
        """Replay one batch (a stbatch.Batch, or records/Updates/dicts as replay.apply takes) and
        write what changed. The report counts this batch; orphans is how many partial statelets
        still wait for an entry the stream has not created (over the whole stream)."""
        r = _report(report)
        t0 = time.perf_counter()
        _replay(self.mirrors, self.kind, statelets, r, self.pending)
        for t, mir in self.mirrors.items():
            mir.flush(self.maps[t])
        r["orphans"] = len(self.pending)
        r["apply_s"] = r.get("apply_s", 0.0) + time.perf_counter() - t0
        for k in COUNTS:
            if k != "orphans":
                self.totals[k] += r[k]
        return r


def _map_source(m, s: Schema):
    def get(keys):
        out = []
        for k in keys:
            v = m.get(s.key.from_buffer_copy(k))
            out.append(None if v is None else bytes(v))
        return out
    return get


def _tables_source(d: dict):
    def get(keys):
        return [None if (v := d.get(k)) is None else bytes(v) for k in keys]
    return get


def apply_fast(target, statelets, report: dict | None = None) -> dict:
    """replay.apply, in bulk (see replay.apply for the arguments and the report)."""
    if isinstance(target, (list, tuple)):
        target = Tables.from_chunks(target)
    r = _report(report)
    t0 = time.perf_counter()
    pending: dict = {}
    if isinstance(target, StreamApplier):
        target.apply(statelets, r)
        return r
    if isinstance(target, Tables):
        mirrors = {t: Mirror(s, _tables_source(target.data[s.name])) for t, s in SCHEMAS.items() if s.kind == target.kind}
        _replay(mirrors, target.kind, statelets, r, pending)
        for t, mir in mirrors.items():
            _write_back(mir, target.data[mir.s.name])
        r["tables"] = target
    else:
        sa = StreamApplier(target, source=True)
        _replay(sa.mirrors, sa.kind, statelets, r, pending)
        for t, mir in sa.mirrors.items():
            mir.flush(sa.maps[t])
    r["orphans"] += len(pending)
    r["apply_s"] = r.get("apply_s", 0.0) + time.perf_counter() - t0
    return r


def _write_back(mir: Mirror, d: dict) -> None:
    """A temporary mirror's changes back into a Tables' dict (raw key -> value struct)."""
    for k in mir.gone:
        d.pop(k, None)
    if mir.dirty:
        rows = mir.changed()
        new = mir.s.value.from_buffer_copy
        kb, vb, vs = mir.keys[rows].tolist(), mir.vals[rows].tobytes(), mir.dt.itemsize
        for i, k in enumerate(kb):
            d[k] = new(vb, i * vs)
    mir.gone, mir.dirty = [], []
