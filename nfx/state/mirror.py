"""The entries a bulk statelet replay works on (nfx/state/fastapply.py): one table's entries as
numpy rows (one column per statelet field, pad as opaque columns) with a dict from key bytes to
row, what changed since the last write, and the batch writes of those changes into a map."""
import ctypes as ct
import errno
from itertools import repeat

import numpy as np

from ..errors import BpfError
from ..loader import bpfsys as sys_
from .statelets import SCHEMAS, Schema

_FMT = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}


def _dtype(s: Schema) -> np.dtype:
    """The value struct as a numpy dtype: one column per statelet field (flow keys: 2 x u64)."""
    if s.fields[0].name is None:
        f = s.fields[0]
        return np.dtype({"names": ["value"], "formats": [("<u8", (2,)) if f.flow else _FMT[ct.sizeof(s.value)]],
                         "offsets": [0], "itemsize": ct.sizeof(s.value)})
    names, formats, offsets = [], [], []
    for f in s.fields:
        d = getattr(s.value, f.name)
        names.append(f.name)
        formats.append(("<u8", (2,)) if f.flow else _FMT[d.size])
        offsets.append(d.offset)
    # every other byte (pad) as a column too: numpy copies fields, not gaps, and pad must travel
    cover = sorted((o, o + np.dtype(f).itemsize) for o, f in zip(offsets, formats))
    at = 0
    for lo, hi in cover + [(ct.sizeof(s.value), ct.sizeof(s.value))]:
        if lo > at:
            names.append(f"_gap{at}")
            formats.append(("u1", (lo - at,)))
            offsets.append(at)
        at = max(at, hi)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ct.sizeof(s.value)})


def _offsets(s: Schema) -> dict[int, np.ndarray]:
    """By field bit: the field's word offset among a statelet's values, by mask (-1: not carried)."""
    out = {}
    for f in s.fields:
        a = np.full(256, -1, np.int64)
        for m in range(s.full_mask + 1):
            if m >> f.bit & 1:
                a[m] = sum(g.words for g in s.fields if g.bit < f.bit and m >> g.bit & 1)
        out[f.bit] = a
    return out


DTYPES = {t: _dtype(s) for t, s in SCHEMAS.items()}
OFFS = {t: _offsets(s) for t, s in SCHEMAS.items()}
INC_MASK = 0xFFFFFFFF


class Mirror:
    """One table's entries: keys (bytes) -> rows of a numpy array of values. `source(keys)`,
    if given, supplies the values (bytes or None) of keys not seen yet (a Tables' dict, a map)."""

    def __init__(self, s: Schema, source=None):
        self.s, self.source = s, source
        self.dt, self.ks = DTYPES[s.table], ct.sizeof(s.key)
        self.index: dict[bytes, int] = {}
        self.keys = np.zeros(0, f"V{self.ks}")
        self.vals = np.zeros(0, self.dt)
        self.alive = np.zeros(0, bool)
        self.in_map = np.zeros(0, bool)      # written to the instance's map (or read from it)
        self.free: list[int] = []
        self.used = 0
        self.dirty: list[np.ndarray] = []    # rows changed since the last flush
        self.gone: list[bytes] = []          # keys removed that the map holds

    def __len__(self) -> int:
        return len(self.index)

    def _grow(self, need: int) -> None:
        cap = len(self.vals)
        if need <= cap:
            return
        cap = max(need, 2 * cap, 1024)
        for name in ("keys", "vals", "alive", "in_map"):
            a = getattr(self, name)
            b = np.zeros(cap, a.dtype)
            b[:len(a)] = a
            setattr(self, name, b)

    def _alloc(self, n: int) -> np.ndarray:
        take = self.free[-n:] if n else []
        del self.free[len(self.free) - len(take):]
        rest = n - len(take)
        self._grow(self.used + rest)
        rows = np.concatenate([np.asarray(take, np.int64), np.arange(self.used, self.used + rest)])
        self.used += rest
        return rows

    def lookup(self, keys: list[bytes]) -> np.ndarray:
        rows = np.array(list(map(self.index.get, keys, repeat(-1, len(keys)))), np.int64)
        if self.source is not None:
            miss = np.flatnonzero(rows < 0)
            if len(miss):
                mk = [keys[i] for i in miss]
                found = [(i, k, v) for i, k, v in zip(miss, mk, self.source(mk)) if v is not None]
                if found:
                    idx = np.array([i for i, _, _ in found])
                    new = self.put(np.array([k for _, k, _ in found], f"V{self.ks}"), np.full(len(found), -1),
                                   np.frombuffer(b"".join(v for _, _, v in found), self.dt), dirty=False)
                    self.in_map[new] = True
                    rows[idx] = new
        return rows

    def put(self, keys: np.ndarray, rows: np.ndarray, vals: np.ndarray, dirty: bool = True) -> np.ndarray:
        """Set entries (rows -1: new keys); returns their rows."""
        rows = rows.copy()
        new = np.flatnonzero(rows < 0)
        if len(new):
            got = self._alloc(len(new))
            rows[new] = got
            self.keys[got] = keys[new]
            self.alive[got] = True
            self.in_map[got] = False
            self.index.update(zip(keys[new].tolist(), got.tolist()))
        _raw(self.vals)[rows] = _raw(vals)
        if dirty:
            self.dirty.append(rows)
        return rows

    def remove(self, keys: list[bytes], rows: np.ndarray) -> None:
        for k, row in zip(keys, rows.tolist()):
            del self.index[k]
            if self.in_map[row]:
                self.gone.append(k)
            self.alive[row] = self.in_map[row] = False
            self.free.append(row)

    # the store interface replay_one._step uses (one entry at a time)
    def _get(self, s: Schema, key: bytes):
        row = self.index.get(key)
        return None if row is None else s.value.from_buffer_copy(self.vals[row].tobytes())

    def _put(self, s: Schema, key: bytes, v) -> None:
        self.put(np.array([key], f"V{self.ks}"), np.array([self.index.get(key, -1)]),
                 np.frombuffer(bytes(v), self.dt))

    def _delete(self, s: Schema, key: bytes) -> bool:
        row = self.index.get(key)
        if row is not None:
            self.remove([key], np.array([row]))
        return row is not None

    def changed(self) -> np.ndarray:
        """Rows changed since the last flush that still hold entries (np.unique would import
        numpy.ma on first use: 40 ms)."""
        at = np.concatenate(self.dirty)
        if len(at) * 8 < self.used:
            at = np.sort(at)
            keep = np.ones(len(at), bool)
            keep[1:] = at[1:] != at[:-1]
            at = at[keep]
        else:
            mark = np.zeros(self.used, bool)
            mark[at] = True
            at = np.flatnonzero(mark)
        return at[self.alive[at]]

    def take_changes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What to write to the map since the last call: (keys to delete, keys, values to
        update), copies; the rows count as in the map from now on."""
        gone = np.array(self.gone, f"V{self.ks}")
        self.gone = []
        rows = self.changed() if self.dirty else np.zeros(0, np.int64)
        self.dirty = []
        self.in_map[rows] = True
        return gone, np.ascontiguousarray(self.keys[rows]), np.ascontiguousarray(self.vals[rows])

    def flush(self, m) -> tuple[int, int]:
        """Write the changes to map `m` now. Returns (deleted, updated)."""
        return write(m, self.take_changes())


def write(m, changes) -> tuple[int, int]:
    """Removed keys first (batch delete), then changed entries (batch update)."""
    gone, keys, vals = changes
    nd = _delete_keys(m, gone) if len(gone) else 0
    if len(keys):
        n, err = sys_.map_batch(sys_.MAP_UPDATE_BATCH, m.fd, keys.ctypes.data, vals.ctypes.data, len(keys))
        if err:
            raise BpfError(f"batch update of {m.name}: {errno.errorcode.get(err, err)} after {n} "
                           f"of {len(keys)} entries")
    return nd, len(keys)


def _raw(a: np.ndarray) -> np.ndarray:
    """Rows as opaque bytes: numpy copies structured rows field by field, opaque ones whole."""
    return a.view(f"V{a.dtype.itemsize}")


def _delete_keys(m, keys: np.ndarray) -> int:
    """Batch delete; a key the map no longer holds is skipped, not the end of the batch."""
    at, done = 0, 0
    while at < len(keys):
        part = np.ascontiguousarray(keys[at:])
        n, err = sys_.map_batch(sys_.MAP_DELETE_BATCH, m.fd, part.ctypes.data, 0, len(part))
        done += n
        at += n
        if err == errno.ENOENT:
            at += 1
        elif err:
            raise BpfError(f"batch delete from {m.name}: {errno.errorcode.get(err, err)}")
    return done
