"""Hot upgrade: replace a running NF instance's XDP program, keep all of its state, lose no packet.

Two modes, chosen by `conversion`:

* **Shared** (no conversion: a rebuild of the same NF, or a modified .bpf.c whose tables keep
  their layouts). The new program is compiled with NFX_PIN_DIR naming a staging directory that
  holds a second pin of every map pinned for the instance, so each NFX_TABLE opens the very map
  object the running program uses (verified by map id; declared key/value size, type and size
  must equal the kernel's, because BCC silently accepts a pinned map of another layout). Maps
  that are not NFX_TABLEs (the `nfx_tx` devmap, ringbufs, per-CPU scratch) are new objects: the
  devmap is refilled with the old devmap's slots, checked against nfx_port_cfg. Then the program
  is attached over the old one on every interface that runs it (the kernel swaps an XDP program
  atomically per interface) and `prog` and the fresh maps are re-pinned.

* **Converted** (`conversion` maps a table name to a function turning old raw values into new
  raw values). Changed tables are left out of the staging directory, so BCC creates them fresh
  with the new layout; every other table is shared as above. Pass 1 copies and converts every
  entry while the old program runs, a catch-up pass copies what changed during pass 1, then the
  swap; pass 2 (twice: at once, and again after an RCU grace period, when no old-program
  invocation can still be running) applies what the old program changed since the last copy.
  Pass 2 runs inside the kernel, in a generated XDP program driven by BPF_PROG_TEST_RUN, so its
  updates interleave with the new program's as the new program's own updates do: counters get
  the old program's increments added atomically (nothing the new program counted meanwhile is
  overwritten), `maxes` keep the larger value, `ors` are ORed, other fields take the old
  program's value unless the new program changed them since the swap. Finally the converted
  tables' pins are replaced (rename in bpffs, atomic) so the pin dir describes the new program.

Before the swap both programs are parked on a spare veth pair, so the kernel's XDP dispatcher
holds both and each interface's swap is a pointer exchange (tens of us) instead of one RCU grace
period (10-40 ms) between the first side and the second.

Nothing changes if anything fails before the swap (the staging pins are removed, the new
program and its fresh maps die with their last fd). If attaching to the n-th interface fails,
the interfaces already swapped are put back to the old program; so are all of them if pass 2
fails. Guarantees and limits: `GUARANTEES` below."""
import contextlib
import ctypes as ct
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import layout as L
from ..errors import BadInput, BpfError, NfxError, NotFound
from ..loader import attach, bpfsys, netns
from ..loader.compile import _captured_stderr, compile_source, expand_includes, load
from ..loader.maps import Map
from ..paths import BPF_DIR
from ..testbed import state

log = logging.getLogger("nfx.upgrade")

GUARANTEES = """\
Shared layout (no conversion): every packet is processed exactly once, by the old or by the new
program, against the same state objects; no table is copied, so no update can be lost. Both
programs are parked in the kernel's XDP dispatcher beforehand, so each interface's swap is a
pointer exchange; the two sides are swapped back to back, measured 50-200 us apart (upper bound),
and in that moment one side runs the old code and the other the new one, on the same state. (An
XDP attach or repeated XDP test run elsewhere on the machine at the same moment holds the
dispatcher's mutex and can stretch that to ~10 ms.)
Converted layout: every entry the old program holds at the swap is in the new table after
pass 2, converted; every counter increment the old program made is in the new table, added to
what the new program counted meanwhile (atomic adds in the kernel, exact per flow). `maxes` keep
the larger value, `ors` are ORed, other fields keep the new program's value if it changed them
after the swap, else take the old program's. Not guaranteed: (1) a key the old program creates
after the last pre-swap copy (the copy-to-pass-2 window: a few ms, growing with table size) and
that the new program also sees before pass 2 carries it: the new program makes its own entry,
pass 2 keeps it and reports the key under `conflicts` (for the NAT: that connection gets a
second public port; the first port and its return entry stay taken until the datapath
reclaims the port). (2) Until pass 2 the new
program does not see keys created in that window; until the re-pin, right after pass 2, the
converted tables' pins still name the old maps. (3) While the two sides are swapped (see above)
one side works on the old tables and the other on the new ones: a reply that needs an entry the
other side created in that moment is dropped. (4) Old-program runs still in flight on
another CPU at the swap are folded in by the second pass 2, after an RCU grace period.
Always: maps that are not NFX_TABLEs (the devmap, ringbufs, per-CPU scratch) are new objects (the
devmap is refilled before the swap; readers of a ring must reopen its pin; the instance's agent
is restarted after the upgrade so it opens the new objects); programs run by test-run from an
old fd are not upgraded; only hash/array tables convert, keys keep their layout, and a table
keeps its max_entries unless it is converted."""

MEMBARRIER_CMD_GLOBAL = 1          # synchronize_rcu(): no XDP run that began before it is still going
SYS_MEMBARRIER = 324

MAP_TYPE_NAMES = {1: "hash", 2: "array", 5: "percpu_hash", 6: "percpu_array", 9: "lru_hash",
                  10: "lru_percpu_hash", 14: "devmap", 17: "devmap_hash", 27: "ringbuf"}
CONVERTIBLE = {1: "hash", 2: "array", 9: "lru_hash"}
DEVMAPS = {14, 17}

OP_NEW, OP_CHG, OP_DEL = 1, 2, 3
RESULTS = {1: "inserted", 2: "merged", 3: "deleted", 4: "kept", 5: "conflicts", 6: "missing", 7: "insert_failed"}
MERGE_CHUNK = 16384
MERGE_BATCH = 128                  # records per run of the merge program (a bounded loop)
_DEFINE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_libc = ct.CDLL("libc.so.6", use_errno=True)


# ---- conversions ---------------------------------------------------------------------------
@dataclass
class Conversion:
    """How one table's values change layout. `fn` takes the old values as a (rows, old value
    size) uint8 array and returns (rows, new value size) uint8: vectorised, one call per pass.
    `value` is the ctypes mirror of the new value (optional; with it pass 2 merges field by
    field); `counters` are fields pass 2 adds the old program's increments to; `maxes` keep the
    larger; `ors` are ORed. Without `value`, an entry the new program changed after the swap
    keeps the new program's value whole."""
    fn: Callable[[np.ndarray], np.ndarray]
    value: type | None = None
    counters: tuple[str, ...] = ()
    maxes: tuple[str, ...] = ()
    ors: tuple[str, ...] = ()


def by_field(old: type, new: type, **fill) -> Callable[[np.ndarray], np.ndarray]:
    """A vectorised conversion between two ctypes layouts: fields with the same name and size
    are copied, others are set to fill.get(name, 0)."""
    of = {name: (getattr(old, name).offset, getattr(old, name).size) for name, *_ in old._fields_}
    plan = []
    for name, *_ in new._fields_:
        off, size = getattr(new, name).offset, getattr(new, name).size
        src = of.get(name)
        if src and src[1] == size:
            plan.append((off, size, src[0], None))
        else:
            plan.append((off, size, None, int(fill.get(name, 0))))
    osz, nsz = ct.sizeof(old), ct.sizeof(new)

    def convert(vals: np.ndarray) -> np.ndarray:
        if vals.ndim != 2 or vals.shape[1] != osz:
            raise BadInput(f"expected ({osz}-byte {old.__name__} rows), got shape {vals.shape}")
        out = np.zeros((len(vals), nsz), np.uint8)
        for off, size, src, const in plan:
            if src is not None:
                out[:, off:off + size] = vals[:, src:src + size]
            elif const:
                out[:, off:off + size] = np.frombuffer(const.to_bytes(size, "little"), np.uint8)
        return out

    return convert


def _nat_conv(old, new):
    return Conversion(by_field(old, new), new, counters=("pkts", "bytes"),
                      maxes=("last_seen_ns",) + (("max_len",) if new is L.NatEntryV2 else ()),
                      ors=("tcp_flags",))


# named conversions for the CLI: name -> (defines it implies, {table: Conversion})
CONVERSIONS = {
    "nat-v2": ({"NFX_NAT_V2": 1}, {t: _nat_conv(L.NatEntry, L.NatEntryV2) for t in ("nat_fwd", "nat_rev")}),
    "nat-v1": ({"NFX_NAT_V2": None}, {t: _nat_conv(L.NatEntryV2, L.NatEntry) for t in ("nat_fwd", "nat_rev")}),
}


def _conversions(conversion) -> dict[str, Conversion]:
    if conversion is None:
        return {}
    if isinstance(conversion, str):
        if conversion not in CONVERSIONS:
            raise BadInput(f"no conversion named {conversion!r}", hint=f"known: {', '.join(CONVERSIONS)}")
        return dict(CONVERSIONS[conversion][1])
    out = {}
    for name, c in dict(conversion).items():
        if isinstance(c, Conversion):
            out[name] = c
        elif callable(c):
            out[name] = Conversion(c)
        else:
            raise BadInput(f"conversion for {name!r} is neither a function nor a Conversion")
    return out


def parse_defines(items: list[str] | None) -> dict:
    """['K=V', 'K'] -> {'K': 'V', 'K': 1}."""
    out = {}
    for it in items or []:
        k, eq, v = it.partition("=")
        out[k.strip()] = v if eq else 1
    return out


# ---- small kernel helpers ------------------------------------------------------------------
def rcu_sync() -> float:
    """Wait for an RCU grace period; returns the seconds it took."""
    t = time.perf_counter()
    if _libc.syscall(SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        time.sleep(0.1)        # no membarrier: a grace period is far shorter than this
    return time.perf_counter() - t


def _raw(n: int):
    return ct.c_uint8 * n


def _attach_one(ifname: str, fd: int, flags: int) -> int:
    """Attach (replace) an XDP program in the calling thread's netns; 0 or -1."""
    from bcc.libbcc import lib
    return lib.bpf_attach_xdp(ifname.encode(), fd, flags)


_MODE_FLAGS = {"native": attach.XDP_FLAGS_DRV_MODE, "generic": attach.XDP_FLAGS_SKB_MODE}


def _np(arr, n: int, size: int) -> np.ndarray:
    if n == 0:
        return np.zeros((0, size), np.uint8)
    return np.frombuffer(memoryview(arr).cast("B"), np.uint8, count=n * size).reshape(n, size)


def _carray(T, rows: np.ndarray):
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


def _hex(b: np.ndarray) -> str:
    return bytes(b).hex()


# ---- one converted table -------------------------------------------------------------------
class _Table:
    """A table whose layout changes: the old map (by its pin), the new one (fresh, pinned by BCC
    in the staging dir), and the snapshot of the old one the last copy was made from."""

    def __init__(self, name: str, conv: Conversion, old_fd: int, old_info, new_fd: int, new_info, pin: Path):
        self.name, self.conv, self.pin = name, conv, pin
        self.ksz, self.osz, self.nsz = old_info.key_size, old_info.value_size, new_info.value_size
        self.type = old_info.type
        self.max_entries = new_info.max_entries
        self.old = Map(old_fd, _raw(self.ksz), _raw(self.osz), name=name)
        self.new = Map(new_fd, _raw(self.ksz), _raw(self.nsz), name=name)
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
        return _np(keys, n, self.ksz).copy(), _np(vals, n, self.osz).copy()

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
            self.new.update_batch(_carray(_raw(self.ksz), keys), _carray(_raw(self.nsz), conv), len(keys))
        self.keys, self.raw, self.conv_vals = keys, raw, conv
        return {"entries": len(keys), "ms": round((time.perf_counter() - t) * 1e3, 3)}

    def catchup(self) -> dict:
        t = time.perf_counter()
        snap = self.snapshot()
        t_read = time.perf_counter()
        d = self.delta(*snap)
        put = np.concatenate([d["new"], d["chg_now"]]).astype(np.int64)
        if len(put):
            self.new.update_batch(_carray(_raw(self.ksz), d["keys"][put]),
                                  _carray(_raw(self.nsz), d["conv_now"][put]), len(put))
        if len(d["del"]):
            self.new.delete_batch(_carray(_raw(self.ksz), self.keys[d["del"]]), len(d["del"]))
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


# ---- the in-kernel merge program ------------------------------------------------------------
_C_TYPES = {1: "__u8", 2: "__u16", 4: "__u32", 8: "__u64"}


def _words(off: int, size: int) -> list[tuple[int, str]]:
    """Split a byte range into naturally aligned words: straight-line code, no loop, no branch
    per byte (a branch per byte makes the verifier walk 2^n paths)."""
    out, end = [], off + size
    while off < end:
        for w in (8, 4, 2, 1):
            if off % w == 0 and off + w <= end:
                out.append((off, _C_TYPES[w]))
                off += w
                break
    return out


def _diff(a: str, b: str, off: int, size: int) -> str:
    """C expression, nonzero when bytes [off, off+size) of a and b differ."""
    return " | ".join(f"(AT({a}, {o}, {T}) ^ AT({b}, {o}, {T}))" for o, T in _words(off, size))


def _merge_code(t: _Table) -> str:
    lines = []
    for off, size, how in t.fields:
        T = _C_TYPES.get(size) if off % max(size, 1) == 0 else None
        fin, base, cur = f"AT(r->fin, {off}, {T})", f"AT(r->base, {off}, {T})", f"AT(v, {off}, {T})"
        if how == "add":
            lines.append(f"            __sync_fetch_and_add(&{cur}, {fin} - {base});")
        elif how == "max":
            lines.append(f"            if ({fin} > {cur}) {cur} = {fin};")
        elif how == "or":
            lines.append(f"            {cur} |= {fin};")
        elif T is not None:
            lines.append(f"            if ({cur} == {base}) {cur} = {fin};")
        else:
            # untouched by the new program since the swap: take the old program's bytes
            copy = " ".join(f"AT(v, {o}, {W}) = AT(r->fin, {o}, {W});" for o, W in _words(off, size))
            lines.append(f"            if (!({_diff('v', 'r->base', off, size)})) {{ {copy} }}")
    return "\n".join(lines)


def _merge_source(tables: list[_Table]) -> str:
    out = ["#include <uapi/linux/bpf.h>", "#define AT(p, off, T) (*(T *)((char *)(p) + (off)))"]
    for i, t in enumerate(tables):
        kpad, vpad = -(-t.ksz // 8) * 8, -(-t.nsz // 8) * 8
        out.append(f"""
struct k{i} {{ __u8 b[{t.ksz}]; }};
struct v{i} {{ __u8 b[{t.nsz}]; }};
struct r{i} {{ __u8 key[{kpad}]; __u8 base[{vpad}]; __u8 fin[{vpad}]; __u32 op; __u32 pad; }};
BPF_TABLE_PINNED("{CONVERTIBLE[t.type]}", struct k{i}, struct v{i}, t{i}, {t.max_entries}, "{t.pin}");
BPF_ARRAY(recs{i}, struct r{i}, {min(MERGE_CHUNK, t.max_entries)});
BPF_ARRAY(ctl{i}, __u64, 8);

int nfx_merge{i}(struct xdp_md *ctx)
{{
    __u32 z = 0, e = 7;
    __u64 *cur = ctl{i}.lookup(&z);
    __u64 *end = ctl{i}.lookup(&e);
    if (!cur || !end)
        return XDP_ABORTED;
    for (int k = 0; k < {MERGE_BATCH}; k++) {{
        __u32 idx = (__u32)*cur;
        if (idx >= *end)
            break;
        *cur = idx + 1;
        struct r{i} *r = recs{i}.lookup(&idx);
        if (!r)
            return XDP_ABORTED;
        __u32 res = 6;
        struct v{i} *v = t{i}.lookup((struct k{i} *)r->key);
        if (r->op == {OP_NEW}) {{
            if (v)
                res = 5;
            else
                res = t{i}.insert((struct k{i} *)r->key, (struct v{i} *)r->fin) == 0 ? 1 : 7;
        }} else if (r->op == {OP_DEL}) {{
            if (v) {{
                if (!({_diff("v", "r->base", 0, t.nsz)})) {{
                    t{i}.delete((struct k{i} *)r->key);
                    res = 3;
                }} else {{
                    res = 4;
                }}
            }}
        }} else if (v) {{
{_merge_code(t)}
            res = 2;
        }}
        r->pad = res;
    }}
    return XDP_PASS;
}}
""")
    return "\n".join(out)


class _Merger:
    """Loaded before the swap, run after it: one generated XDP program per converted table. The
    delta records go into an array; each BPF_PROG_TEST_RUN (repeat 1) merges up to MERGE_BATCH
    of them in a bounded loop and writes each record's outcome back into it."""

    def __init__(self, tables: list[_Table]):
        import bcc
        self.tables = tables
        text = _merge_source(tables)
        # stderr is not captured here: an LLVM fatal error exits the process, and its message must show
        try:
            self.b = bcc.BPF(text=text.encode(), cflags=["-w"])
            self.fns = [self.b.load_func(f"nfx_merge{i}".encode(), bcc.BPF.XDP) for i in range(len(tables))]
        except Exception as e:
            raise BpfError(f"the pass-2 merge program did not build: {e} (the verifier's log is above)") from None
        self.recs, self.ctl = [], []
        for i, t in enumerate(tables):
            rm = self.b[f"recs{i}".encode()]
            self.recs.append(Map(rm.map_fd, L.u32, _raw(ct.sizeof(rm.Leaf))))
            self.ctl.append(Map(self.b[f"ctl{i}".encode()].map_fd, L.u32, L.u64))
            ids = {bpfsys.map_info(self.b[f"t{i}".encode()].map_fd).id, bpfsys.map_info(t.new.fd).id}
            if len(ids) != 1:
                raise BpfError(f"the merge program for {t.name} did not open the new table")

    def apply(self, i: int, rec: np.ndarray) -> tuple[dict, np.ndarray]:
        """Run the merge over `rec`; returns the result counts and the keys that conflicted
        (new keys the new program had already created itself)."""
        recs, ctl = self.recs[i], self.ctl[i]
        if rec.shape[1] != ct.sizeof(recs.Value):
            raise BpfError(f"merge record of {rec.shape[1]} B, the program expects {ct.sizeof(recs.Value)}")
        counts: dict[str, int] = {}
        conflicts = []
        ksz = self.tables[i].ksz
        for lo in range(0, len(rec), recs.max_entries):
            part = rec[lo:lo + recs.max_entries]
            n = len(part)
            recs.update_batch(_carray(L.u32, np.arange(n, dtype="<u4").view(np.uint8).reshape(n, 4)),
                              _carray(recs.Value, part), n)
            ctl.put(L.u32(0), L.u64(0))
            ctl.put(L.u32(7), L.u64(n))
            for _ in range(n // MERGE_BATCH + 2):
                # repeat=1: a repeated XDP test run rebuilds the XDP dispatcher (two RCU waits)
                rv, _, _ = bpfsys.prog_test_run(self.fns[i].fd, bytes(64))
                if rv != 2 or ctl.get(L.u32(0)).value >= n:
                    break
            done = ctl.get(L.u32(0)).value
            if rv != 2 or done != n:
                raise BpfError(f"the merge program for {self.tables[i].name} stopped at record {done} of {n} (verdict {rv})")
            m, _, vals = recs.export(n)
            out = _np(vals, m, rec.shape[1])
            res = out[:, -4:].copy().view("<u4").reshape(-1)
            for code, cnt in zip(*np.unique(res, return_counts=True)):
                name = RESULTS.get(int(code), f"result_{code}")
                counts[name] = counts.get(name, 0) + int(cnt)
            conflicts.append(out[res == 5, :ksz])
        return counts, (np.concatenate(conflicts) if conflicts else np.zeros((0, ksz), np.uint8))

    def close(self):
        self.b.cleanup()


# ---- the upgrade ----------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(pin_dir: Path, instance: str):
    fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NfxError(f"another upgrade of {instance} is running") from None
        yield
    finally:
        os.close(fd)


def _source_hash(text: str, defines: dict) -> str:
    h = hashlib.sha256(text.encode())
    h.update(json.dumps(sorted((k, str(v)) for k, v in defines.items())).encode())
    return h.hexdigest()


def _read_raw(fd: int, info, key: int):
    k = ct.c_uint32(key)
    v = _raw(info.value_size)()
    r = bpfsys.map_elem(bpfsys.MAP_LOOKUP_ELEM, fd, k, v)
    return None if r else bytes(v)


class _Upgrade:
    def __init__(self, rec, instance, source, defines, convs, say, hook):
        info = rec.get("nodes", {}).get(instance)
        if not info or info.get("role") != "nf" or "pin" not in info:
            nfs = [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]
            raise NotFound(f"no NF instance {instance!r} in testbed {rec['name']}", hint=f"instances: {', '.join(nfs) or 'none'}")
        self.rec, self.instance, self.info = rec, instance, info
        self.kind, self.ns, self.pin_dir = info["kind"], info["ns"], Path(info["pin"])
        self.sides = list(info.get("wiring") or [])
        self.say, self.hook, self.convs = say, hook, convs
        self.src = Path(source) if source else BPF_DIR / f"{self.kind}.bpf.c"
        if not self.src.is_file():
            raise NotFound(f"no BPF source {self.src}")
        base = {"NFX_MAX_FLOWS": rec.get("max_flows", 262144), **info.get("build", {}).get("defines", {})}
        for k, v in (defines or {}).items():
            if not _DEFINE_RE.match(str(k)) or k == "NFX_PIN_DIR":
                raise BadInput(f"bad define {k!r}" + (": upgrade sets NFX_PIN_DIR itself" if k == "NFX_PIN_DIR" else ""))
            if v is None:
                base.pop(k, None)
            else:
                base[k] = v
        self.defines = base
        self.staging = self.pin_dir.parent / f"upgrade-{instance}"     # bpffs names cannot hold a dot
        self.fds: list[int] = []
        self.b = self.fn = self.merger = None
        self.report = {"testbed": rec["name"], "instance": instance, "kind": self.kind,
                       "mode": "converted" if convs else "shared", "source": str(self.src),
                       "defines": dict(self.defines), "passes": [], "timing": {}}

    def _fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    # -- what runs now
    def inspect_old(self):
        if not (self.pin_dir / "prog").exists():
            raise NotFound(f"instance {self.instance} has no pinned program at {self.pin_dir}/prog")
        self.old_prog = self._fd(bpfsys.obj_get(str(self.pin_dir / "prog")))
        pi, used = bpfsys.prog_info(self.old_prog)
        self.old_id, self.old_used = pi.id, set(used)
        self.old_maps = {}                                   # name -> (fd, MapInfo)
        for p in sorted(self.pin_dir.iterdir()):
            if p.name == "prog" or p.is_dir():
                continue
            fd = bpfsys.obj_get(str(p))
            if bpfsys.fd_kind(fd) != "map":
                os.close(fd)                                 # someone else's pinned program: left alone
                continue
            self._fd(fd)
            self.old_maps[p.name] = (fd, bpfsys.map_info(fd))
        att = attach.xdp_attachments(self.ns)
        self.ifaces = [i for i in att if att[i][0] == self.old_id]
        missing = [s for s in self.sides if s not in self.ifaces]
        if missing:
            raise NfxError(f"{self.instance}: {', '.join(missing)} does not run the pinned program {self.old_id} "
                           f"({', '.join(f'{i}: {att.get(i, (None,))[0]}' for i in missing)}): refusing to upgrade")
        if not self.ifaces:
            raise NfxError(f"{self.instance}: the pinned program {self.old_id} is attached nowhere")
        self.ifaces = self.sides + sorted(i for i in self.ifaces if i not in self.sides)
        self.modes = {i: att[i][1] for i in self.ifaces}
        for name, c in self.convs.items():
            if name not in self.old_maps:
                raise BadInput(f"conversion for {name!r}: {self.instance} has no table {name}",
                               hint=f"tables: {', '.join(sorted(self.old_maps))}")
            ty = self.old_maps[name][1].type
            if ty not in CONVERTIBLE:
                raise BadInput(f"table {name} is a {MAP_TYPE_NAMES.get(ty, ty)} map: hot upgrade converts "
                               f"only {', '.join(CONVERTIBLE.values())} tables")
        self.report.update(old_prog_id=self.old_id, interfaces=list(self.ifaces))

    # -- build
    def stage(self):
        if self.staging.exists():
            shutil.rmtree(self.staging)                      # a crashed upgrade's leftovers (we hold the lock)
        self.staging.mkdir(parents=True)
        self.staged = set()
        for name, (fd, _) in self.old_maps.items():
            if name not in self.convs:
                bpfsys.obj_pin(fd, str(self.staging / name))
                self.staged.add(name)

    def build(self):
        text = expand_includes(self.src.read_text())
        self.report["source_sha256"] = _source_hash(text, self.defines)
        t = time.perf_counter()
        self.say(f"compiling {self.src.name} ({', '.join(f'{k}={v}' for k, v in self.defines.items())})")
        self.b = compile_source(self.kind, {**self.defines, "NFX_PIN_DIR": f'"{self.staging}"'}, path=self.src)
        self.report["timing"]["compile_s"] = round(time.perf_counter() - t, 3)

    def verify(self):
        """The maps first (BCC created or opened them when it compiled), then the program: the
        verifier checks accesses against the maps it is given, so a layout mismatch is caught
        here with a clear message before it can become a verifier log."""
        from ..loader.pin import map_names
        created = {p.name for p in self.staging.iterdir()} - self.staged     # pinned there by BCC
        self.new_maps, how = {}, {}
        problems, warnings = [], []
        for name in map_names(self.b):
            t = self.b[name.encode()]
            fd = t.map_fd
            ki = bpfsys.map_info(fd)
            self.new_maps[name] = (fd, ki)
            old = self.old_maps.get(name)
            if name in self.convs:
                if name not in created or (old and ki.id == old[1].id):
                    problems.append(f"{name}: the new program did not create a fresh table to convert into")
                elif ki.key_size != old[1].key_size or ki.type != old[1].type:
                    problems.append(f"{name}: a conversion changes values only; key {old[1].key_size}->{ki.key_size} B, "
                                    f"type {MAP_TYPE_NAMES.get(old[1].type)}->{MAP_TYPE_NAMES.get(ki.type)}")
                how[name] = "converted"
            elif name in created:
                how[name] = "added"                          # an NFX_TABLE the old program did not have
            elif name in self.staged and ki.id == old[1].id:
                # BCC opened the pinned map whatever the declaration says: compare the two
                leaf = getattr(t, "sLeaf", t.Leaf)           # BCC's per-CPU Leaf is an array of CPUs
                decl = (ct.sizeof(t.Key), ct.sizeof(leaf), int(t.ttype), int(t.max_entries))
                have = (ki.key_size, ki.value_size, ki.type, ki.max_entries)
                if ki.type == 27:                            # a ringbuf has no key or value
                    decl = (0, 0) + decl[2:]
                if decl != have:
                    problems.append(
                        f"{name}: the new program declares key {decl[0]} B, value {decl[1]} B, "
                        f"{MAP_TYPE_NAMES.get(decl[2], decl[2])}[{decl[3]}]; the running table is key {have[0]} B, "
                        f"value {have[1]} B, {MAP_TYPE_NAMES.get(have[2], have[2])}[{have[3]}]" +
                        ("" if decl[:3] == have[:3] else f": its layout changes, give a conversion for {name}"))
                how[name] = "shared"
            else:
                how[name] = "fresh"                          # not an NFX_TABLE: a new object (devmap, ring, scratch)
                if old and old[1].type not in DEVMAPS | {2, 6, 27}:     # arrays outside NFX_TABLE: scratch
                    warnings.append(f"{name}: a new, empty {MAP_TYPE_NAMES.get(ki.type, ki.type)} replaces the "
                                    f"pinned one (not declared with NFX_TABLE in the new program)")
        for name in self.convs:
            if name not in self.new_maps:
                problems.append(f"{name}: the new program has no table {name} to convert into")
        if problems:
            raise BpfError(f"the new {self.kind} program does not fit {self.instance}'s state:\n  " + "\n  ".join(problems))
        t = time.perf_counter()
        self.fn = load(self.b, f"nfx_{self.kind}", "xdp")
        self.report["timing"]["load_s"] = round(time.perf_counter() - t, 3)
        pi, used = bpfsys.prog_info(self.fn.fd)
        self.new_id = pi.id
        ids = {fd_ki[1].id for fd_ki in self.new_maps.values()}
        foreign = set(used) - ids
        if foreign:
            problems.append(f"the new program uses map ids {sorted(foreign)} that are none of its tables")
        if problems:
            raise BpfError(f"the new {self.kind} program does not fit {self.instance}'s state:\n  " + "\n  ".join(problems))
        self.how = how
        self.removed = sorted(n for n in self.old_maps if n not in self.new_maps)
        self.report["new_prog_id"] = self.new_id
        self.report["maps"] = {n: {"how": how[n], "id": self.new_maps[n][1].id,
                                   **({"old_id": self.old_maps[n][1].id} if n in self.old_maps else {})}
                               for n in sorted(self.new_maps)}
        self.report["removed_tables"] = self.removed
        unpinned = self.old_used - {i.id for _, i in self.old_maps.values()}
        if unpinned:
            warnings.append(f"the running program uses {len(unpinned)} map(s) with no pin under {self.pin_dir} "
                            f"(ids {sorted(unpinned)}): their contents are not carried over")
        self.report["warnings"] = warnings
        if self.convs:
            self.tables = [_Table(n, c, self.old_maps[n][0], self.old_maps[n][1], self.new_maps[n][0],
                                  self.new_maps[n][1], self.staging / n) for n, c in self.convs.items()]
            self.say("building the pass-2 merge program")
            t = time.perf_counter()
            self.merger = _Merger(self.tables)
            self.report["timing"]["merge_build_s"] = round(time.perf_counter() - t, 3)
            for t_ in self.tables:      # the conversion must accept a row before anything moves
                t_.convert(np.zeros((1, t_.osz), np.uint8))

    def refill_devmaps(self):
        """New devmaps get the old devmap's slots; the sides must agree with nfx_port_cfg."""
        port = self.old_maps.get("nfx_port_cfg")
        sides = None
        if port:
            raw = _read_raw(port[0], port[1], 0)
            if raw and len(raw) >= 8:
                sides = list(np.frombuffer(raw[:8], "<u4"))
        filled = {}
        with netns.enter(self.ns):
            for name, (fd, ki) in self.new_maps.items():
                if ki.type not in DEVMAPS or self.how.get(name) != "fresh":
                    continue
                if ki.value_size != 4:
                    raise BpfError(f"devmap {name} has {ki.value_size}-byte values: only ifindex slots are refilled")
                old = self.old_maps.get(name)
                slots = {}
                for s in range(ki.max_entries):
                    v = _read_raw(old[0], old[1], s) if old else None
                    if v is not None:
                        slots[s] = int.from_bytes(v, "little")
                if sides and name == "nfx_tx":
                    for s, idx in enumerate(sides):
                        if idx and slots.get(s, idx) != idx:
                            raise BpfError(f"{name} slot {s} holds ifindex {slots[s]}, nfx_port_cfg says {idx}")
                        if idx:
                            slots[s] = int(idx)
                for s, idx in slots.items():
                    r = bpfsys.map_elem(bpfsys.MAP_UPDATE_ELEM, fd, ct.c_uint32(s), ct.c_uint32(idx))
                    if r:
                        raise BpfError(f"refilling {name} slot {s} (ifindex {idx}): {os.strerror(r)}")
                filled[name] = slots
        self.report["devmaps"] = filled

    DUMMY = ("upg0", "upg1")

    def prewarm(self) -> None:
        """Put the new program into the kernel's XDP dispatcher, and keep the old one in it, before
        the swap: attaching a program the dispatcher does not hold yet (or detaching the last
        user of one) waits for an RCU grace period (10-40 ms) inside the attach call. On the
        first side that would keep the two sides on different programs for that long; with
        both programs parked on a spare veth pair, each side's swap is a pointer exchange."""
        a, b = self.DUMMY
        netns.ip("link", "del", a, ns=self.ns, check=False)
        netns.ip("link", "add", a, "type", "veth", "peer", "name", b, ns=self.ns)
        self.dummy = True
        flags = _MODE_FLAGS.get(self.modes[self.ifaces[0]], 0)
        log_: list[str] = []
        t = time.perf_counter()
        with netns.enter(self.ns), _captured_stderr(log_):
            ok = _attach_one(a, self.fn.fd, flags) == 0 and _attach_one(b, self.old_prog, flags) == 0
        self.report["prewarm"] = {"ok": ok, "ms": round((time.perf_counter() - t) * 1e3, 2)}
        if not ok:
            log.warning("parking the programs on %s/%s failed (%s): the swap will wait for the dispatcher",
                        a, b, (log_ or [""])[0].strip())

    # -- state
    def pass1(self):
        for t in self.tables:
            self.say(f"pass 1: {t.name}")
            self.report["passes"].append({"pass": "1", "table": t.name, **t.pass1()})
        for t in self.tables:
            self.report["passes"].append({"pass": "catch-up", "table": t.name, **t.catchup()})

    def pass2(self, which: str) -> None:
        conflicts = self.report.setdefault("conflicts", [])
        for i, t in enumerate(self.tables):
            t0 = time.perf_counter()
            snap = t.snapshot()
            t1 = time.perf_counter()
            d = t.delta(*snap)
            rec = t.records(d)
            t2 = time.perf_counter()
            res, clash = self.merger.apply(i, rec) if len(rec) else ({}, [])
            conflicts += [{"table": t.name, "key": _hex(k)} for k in clash]
            if res.get("insert_failed"):
                self.report["warnings"].append(f"{t.name}: {res['insert_failed']} entries the old program created "
                                               f"could not be inserted into the new table (full)")
            t.adopt(d)
            self.report["passes"].append({"pass": which, "table": t.name, "new": len(d["new"]),
                                          "changed": len(d["chg_now"]), "deleted": len(d["del"]), **res,
                                          "read_ms": round((t1 - t0) * 1e3, 3), "delta_ms": round((t2 - t1) * 1e3, 3),
                                          "ms": round((time.perf_counter() - t0) * 1e3, 3)})

    # -- the swap
    def swap(self, fd: int, order: list[str]) -> tuple[int, list[int]]:
        """Attach fd on each interface in order; returns (how many succeeded, ns timestamps)."""
        done = 0
        log_: list[str] = []
        with netns.enter(self.ns), _captured_stderr(log_):
            stamps = [time.perf_counter_ns()]
            for ifn in order:
                if _attach_one(ifn, fd, _MODE_FLAGS.get(self.modes[ifn], 0)) != 0:
                    break
                stamps.append(time.perf_counter_ns())
                done += 1
        self.swap_log = (log_ or [""])[0].strip()
        return done, stamps

    def rollback(self, ifaces: list[str]) -> list[str]:
        back, stamps = self.swap(self.old_prog, ifaces)
        return ifaces[back:]

    def do_swap(self):
        self.hook("before_swap")
        done, st = self.swap(self.fn.fd, self.ifaces)
        if done < len(self.ifaces):
            failed, why = self.ifaces[done], self.swap_log
            stuck = self.rollback(self.ifaces[:done])
            msg = f"attaching the new program to {failed} failed ({why or 'see above'})"
            if stuck:
                raise BpfError(msg + f"; rolling back failed on {', '.join(stuck)}: they run program {self.new_id}")
            raise BpfError(msg + (f"; {', '.join(self.ifaces[:done])} put back to program {self.old_id}" if done else
                                  "; nothing was swapped"))
        self.swapped_at = time.perf_counter()
        us = [(b - a) / 1e3 for a, b in zip(st, st[1:])]
        self.report["swap"] = {"per_interface_us": dict(zip(self.ifaces, [round(u, 1) for u in us])),
                               # the first side's new program runs from inside its attach call, the
                               # second's by the end of its call: an upper bound on the mixed window
                               "sides_apart_max_us": round((st[2] - st[0]) / 1e3, 1) if len(st) > 2 else 0.0,
                               "total_us": round((st[-1] - st[0]) / 1e3, 1)}

    # -- after
    def repin(self):
        moved = []
        for name, (fd, ki) in self.new_maps.items():
            h = self.how[name]
            if h == "shared":
                continue
            tmp = self.staging / name
            if h == "fresh":
                tmp.unlink(missing_ok=True)
                bpfsys.obj_pin(fd, str(tmp))
            os.replace(tmp, self.pin_dir / name)
            moved.append(name)
        tmp = self.staging / "prog"
        tmp.unlink(missing_ok=True)
        bpfsys.obj_pin(self.fn.fd, str(tmp))
        os.replace(tmp, self.pin_dir / "prog")
        for name in self.removed:
            (self.pin_dir / name).unlink(missing_ok=True)
        self.report["repinned"] = moved

    def record(self):
        rec = state.load(self.rec["name"])
        node = rec["nodes"][self.instance]
        entry = {"time": time.time(), "old_prog_id": self.old_id, "prog_id": self.new_id,
                 "source": str(self.src), "source_sha256": self.report["source_sha256"],
                 "defines": {k: v for k, v in self.defines.items()}, "mode": self.report["mode"],
                 "converted": sorted(self.convs), "swap_us": self.report["swap"]["total_us"]}
        node["prog_id"] = self.new_id
        node["build"] = {"source": str(self.src), "source_sha256": entry["source_sha256"], "defines": entry["defines"]}
        node.setdefault("upgrades", []).append(entry)
        rec.save()

    def close(self):
        if getattr(self, "dummy", False) and netns.exists(self.ns):
            netns.ip("link", "del", self.DUMMY[0], ns=self.ns, check=False)
            self.dummy = False
        if self.merger:
            self.merger.close()
        if self.b is not None:
            self.b.cleanup()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)


def _agent(testbed: str, instance: str, restart: bool, repinned: list[str]) -> tuple[dict | None, list[str]]:
    """An agent opens the instance's maps once, when it starts: after an upgrade it holds the
    objects that were replaced. Restart it (it re-adopts the pins), or say so."""
    try:
        from ..agent import lifecycle
        pid = lifecycle.pid_of(state.load(testbed), instance)
    except Exception:                       # noqa: BLE001 - no agent support: nothing to do
        return None, []
    if not pid or not repinned:
        return None, []
    stale = f"still holds the replaced {', '.join(repinned)}"
    if not restart:
        return None, [f"the agent of {instance} (pid {pid}) opened its maps before the upgrade and {stale}: "
                      f"restart it (nfx nf stop / nfx nf start)"]
    t = time.perf_counter()
    try:
        lifecycle.stop(state.load(testbed), instance)
        new = lifecycle.start(state.load(testbed), instance)[instance]
    except NfxError as e:
        return None, [f"restarting the agent of {instance} (pid {pid}, which {stale}) failed: {e}"]
    return {"old_pid": pid, "pid": new["pid"], "restart_ms": round((time.perf_counter() - t) * 1e3, 1)}, []


def upgrade(testbed: str, instance: str, source: str | Path | None = None, defines: dict | None = None,
            conversion=None, progress: Callable[[str], None] | None = None,
            hook: Callable[[str], None] | None = None, restart_agent: bool = True) -> dict:
    """Replace the XDP program of `instance` in `testbed` while it runs; returns a report.
    source: a .bpf.c file (default: bpf/<kind>.bpf.c); defines: -D flags on top of the
    instance's current build (None as a value removes one); conversion: {table: function or
    Conversion} or the name of a built-in one (CONVERSIONS), whose defines apply first.
    hook(stage) is called at 'verified', 'pass1', 'before_swap', 'swapped', 'pass2' (tests).
    restart_agent: restart the instance's agent, if one runs, so it opens the new objects."""
    say = progress or (lambda msg: None)
    hook = hook or (lambda stage: None)
    if isinstance(conversion, str):
        implied = CONVERSIONS.get(conversion, ({}, None))[0]
        defines = {**implied, **(defines or {})}
    convs = _conversions(conversion)
    t_all = time.perf_counter()
    rec = state.load(testbed)
    up = _Upgrade(rec, instance, source, defines, convs, say, hook)
    with _locked(up.pin_dir, instance):
        try:
            up.inspect_old()
            up.stage()
            up.build()
            up.verify()
            hook("verified")
            up.refill_devmaps()
            up.prewarm()
            if convs:
                up.pass1()
                hook("pass1")
            say(f"swapping {', '.join(up.ifaces)}: program {up.old_id} -> {up.new_id}")
            up.do_swap()
        except BaseException:
            up.close()
            raise
        try:
            hook("swapped")
            if convs:
                up.pass2("2")                       # at once: shortest window for new keys
                up.report["timing"]["rcu_ms"] = round(rcu_sync() * 1e3, 2)
                up.pass2("2-after-rcu")             # what old-program runs still in flight wrote
                hook("pass2")
        except BaseException as e:
            stuck = up.rollback(list(reversed(up.ifaces)))
            ran = (time.perf_counter() - up.swapped_at) * 1e3
            up.close()
            if stuck:
                raise BpfError(f"pass 2 failed ({e}) and rolling back failed on {', '.join(stuck)}") from e
            raise NfxError(f"pass 2 failed after the swap ({e}); rolled back to program {up.old_id}. "
                           f"What the new program wrote to the converted tables in the {ran:.1f} ms it ran is "
                           f"lost; shared tables keep it.") from e
        try:
            up.repin()
            up.record()
        except BaseException as e:
            raise NfxError(f"program {up.new_id} runs on {', '.join(up.ifaces)} with all state, but recording "
                           f"the upgrade failed: {e}; the pins under {up.pin_dir} may still name old objects") from e
        finally:
            up.close()
    att = attach.xdp_attachments(up.ns)
    agent, warn = _agent(testbed, instance, restart_agent, up.report.get("repinned", []))
    up.report["agent"] = agent
    up.report["warnings"] += warn
    up.report["attached"] = {i: att.get(i, (None,))[0] for i in up.ifaces}
    up.report["timing"]["total_s"] = round(time.perf_counter() - t_all, 3)
    hook("done")
    return up.report
