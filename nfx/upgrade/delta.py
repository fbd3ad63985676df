"""Key-set maths and change tracking for a converted table in a hot upgrade: which keys the old
program added, changed or removed since the last copy (vectorised over raw key/value rows),
the pre-swap copies, and the records pass 2's in-kernel merge applies (nfx.upgrade.merge)."""
import ctypes as ct
import time
from pathlib import Path

import numpy as np

from ..errors import BadInput, BpfError, NfxError
from ..loader.maps import Map
from .convert import Conversion

OP_NEW, OP_CHG, OP_DEL = 1, 2, 3


def raw_t(n: int):
    """A ctypes type of n bytes: tables are handled as raw rows."""
    return ct.c_uint8 * n


def as_rows(arr, n: int, size: int) -> np.ndarray:
    if n == 0:
        return np.zeros((0, size), np.uint8)
    return np.frombuffer(memoryview(arr).cast("B"), np.uint8, count=n * size).reshape(n, size)


def carray(T, rows: np.ndarray):
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    buf = bytearray(rows.tobytes())
    return (T * len(rows)).from_buffer(buf)


def _void(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows)
    return rows.view(np.dtype((np.void, rows.shape[1]))).ravel()


def _khash(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash per key row (vectorised)."""
    n, ksz = rows.shape
    pad = (-ksz) % 8
    if pad:
        rows = np.concatenate([rows, np.zeros((n, pad), np.uint8)], axis=1)
    words = np.ascontiguousarray(rows).view("<u8")
    h = np.full(n, 0xCBF29CE484222325, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h = (h ^ words[:, j]) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
    return h


def _join(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of the keys present in both a and b (rows of key bytes; each side's keys
    are unique). Sort-and-search on 64-bit hashes, every match checked on the whole key; exact
    set operations on the raw keys if two keys of `a` share a hash."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(a) == len(b) and np.array_equal(a, b):          # nothing added or removed, same order
        idx = np.arange(len(a))
        return idx, idx
    ha, hb = _khash(a), _khash(b)
    oa, ob = np.argsort(ha), np.argsort(hb)
    sa, sb = ha[oa], hb[ob]
    if len(sa) > 1 and not np.all(sa[1:] != sa[:-1]):
        _, ia, ib = np.intersect1d(_void(a), _void(b), assume_unique=True, return_indices=True)
        return ia, ib
    pos = np.minimum(np.searchsorted(sa, sb), len(sa) - 1)       # sorted queries: a linear walk
    cand, qb = oa[pos], ob
    hit = (sa[pos] == sb) & np.all(a[cand] == b[qb], axis=1)
    return cand[hit], qb[hit]


# ---- one converted table -------------------------------------------------------------------
class Table:
    """A table whose layout changes: the old map (by its pin), the new one (fresh, pinned by BCC
    in the staging dir), and the snapshot of the old one the last copy was made from."""

    def __init__(self, name: str, conv: Conversion, old_fd: int, old_info, new_fd: int, new_info, pin: Path):
        self.name, self.conv, self.pin = name, conv, pin
        self.ksz, self.osz, self.nsz = old_info.key_size, old_info.value_size, new_info.value_size
        self.type = old_info.type
        self.max_entries = new_info.max_entries
        self.old = Map(old_fd, raw_t(self.ksz), raw_t(self.osz), name=name)
        self.new = Map(new_fd, raw_t(self.ksz), raw_t(self.nsz), name=name)
        self.keys = self.raw = self.conv_vals = None
        self.fields = self._fields()

    def _fields(self) -> list[tuple[int, int, str]]:
        """(offset, size, how) over the new value: how is add | max | or | other."""
        c, T = self.conv, self.conv.value
        if T is None:
            if c.counters or c.maxes or c.ors:
                raise BadInput(f"conversion for {self.name}: counters/maxes/ors need the new value type")
            return [(0, self.nsz, "other")]
        if ct.sizeof(T) != self.nsz:
            raise BpfError(f"conversion for {self.name} declares a {ct.sizeof(T)}-byte value; the new "
                           f"program's {self.name} has {self.nsz}-byte values")
        names = {n for n, *_ in T._fields_}
        out = []
        for how, group in (("add", c.counters), ("max", c.maxes), ("or", c.ors)):
            for f in group:
                if f not in names:
                    raise BadInput(f"conversion for {self.name}: {T.__name__} has no field {f!r}")
                size, off = getattr(T, f).size, getattr(T, f).offset
                if size not in ((4, 8) if how == "add" else (1, 2, 4, 8)) or off % size:
                    raise BadInput(f"conversion for {self.name}: field {f} ({size} bytes at offset {off}) "
                                   f"cannot be '{how}': it must be an aligned {'u32/u64' if how == 'add' else 'integer'}")
        for n, *_ in T._fields_:
            d = getattr(T, n)
            how = ("add" if n in c.counters else "max" if n in c.maxes else "or" if n in c.ors else "other")
            out.append((d.offset, d.size, how))
        return out

    def convert(self, vals: np.ndarray) -> np.ndarray:
        try:
            out = self.conv.fn(vals)
        except NfxError:
            raise
        except Exception as e:
            raise BadInput(f"the conversion of {self.name} raised {type(e).__name__}: {e}") from None
        if not isinstance(out, np.ndarray) or out.shape != (len(vals), self.nsz):
            shape = getattr(out, "shape", type(out).__name__)
            raise BadInput(f"the conversion of {self.name} returned {shape}; expected ({len(vals)}, {self.nsz}) uint8")
        return out.astype(np.uint8, copy=False)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        n, keys, vals = self.old.export()
        return as_rows(keys, n, self.ksz).copy(), as_rows(vals, n, self.osz).copy()

    def delta(self, keys: np.ndarray, raw: np.ndarray) -> dict:
        """What changed in the old table since the last snapshot: new, changed, deleted rows,
        with the converted values before (base) and now (fin)."""
        ib, ic = _join(self.keys, keys)
        chg = np.any(self.raw[ib] != raw[ic], axis=1) if len(ib) else np.zeros(0, bool)
        seen_c, seen_b = np.zeros(len(keys), bool), np.zeros(len(self.keys), bool)
        seen_c[ic], seen_b[ib] = True, True
        new, dele = np.flatnonzero(~seen_c), np.flatnonzero(~seen_b)
        conv_now = np.empty((len(keys), self.nsz), np.uint8)
        conv_now[ic[~chg]] = self.conv_vals[ib[~chg]]
        touched = np.concatenate([new, ic[chg]])
        if len(touched):
            conv_now[touched] = self.convert(raw[touched])
        d = {"new": new, "chg_now": ic[chg], "chg_base": ib[chg], "del": dele, "conv_now": conv_now,
             "keys": keys, "raw": raw}
        return d

    def adopt(self, d: dict) -> None:
        self.keys, self.raw, self.conv_vals = d["keys"], d["raw"], d["conv_now"]

    # pre-swap: only we write the new table
    def pass1(self) -> dict:
        t = time.perf_counter()
        keys, raw = self.snapshot()
        conv = self.convert(raw if len(raw) else np.zeros((1, self.osz), np.uint8))[:len(raw)]
        if len(keys):
            self.new.update_batch(carray(raw_t(self.ksz), keys), carray(raw_t(self.nsz), conv), len(keys))
        self.keys, self.raw, self.conv_vals = keys, raw, conv
        return {"entries": len(keys), "ms": round((time.perf_counter() - t) * 1e3, 3)}

    def catchup(self) -> dict:
        t = time.perf_counter()
        snap = self.snapshot()
        t_read = time.perf_counter()
        d = self.delta(*snap)
        put = np.concatenate([d["new"], d["chg_now"]]).astype(np.int64)
        if len(put):
            self.new.update_batch(carray(raw_t(self.ksz), d["keys"][put]),
                                  carray(raw_t(self.nsz), d["conv_now"][put]), len(put))
        if len(d["del"]):
            self.new.delete_batch(carray(raw_t(self.ksz), self.keys[d["del"]]), len(d["del"]))
        self.adopt(d)
        return {"new": len(d["new"]), "changed": len(d["chg_now"]), "deleted": len(d["del"]),
                "read_ms": round((t_read - t) * 1e3, 3), "ms": round((time.perf_counter() - t) * 1e3, 3)}

    # post-swap: the new program writes the new table too: merge in the kernel
    def records(self, d: dict) -> np.ndarray:
        kpad, vpad = -(-self.ksz // 8) * 8, -(-self.nsz // 8) * 8
        n_new, n_chg, n_del = len(d["new"]), len(d["chg_now"]), len(d["del"])
        rec = np.zeros((n_new + n_chg + n_del, kpad + 2 * vpad + 8), np.uint8)
        fin0, base0 = kpad + vpad, kpad
        a, b = n_new, n_new + n_chg
        rec[:a, :self.ksz] = d["keys"][d["new"]]
        rec[:a, fin0:fin0 + self.nsz] = d["conv_now"][d["new"]]
        rec[a:b, :self.ksz] = d["keys"][d["chg_now"]]
        rec[a:b, base0:base0 + self.nsz] = self.conv_vals[d["chg_base"]]
        rec[a:b, fin0:fin0 + self.nsz] = d["conv_now"][d["chg_now"]]
        rec[b:, :self.ksz] = self.keys[d["del"]]
        rec[b:, base0:base0 + self.nsz] = self.conv_vals[d["del"]]
        ops = np.empty(len(rec), "<u4")
        ops[:a], ops[a:b], ops[b:] = OP_NEW, OP_CHG, OP_DEL
        rec[:, -8:-4] = ops.view(np.uint8).reshape(-1, 4)
        return rec

