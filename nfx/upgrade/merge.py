"""Pass 2 of a converted hot upgrade, in the kernel: a generated XDP program per converted table
applies the delta records (nfx.upgrade.delta) to the new table, driven by BPF_PROG_TEST_RUN, so
its updates interleave with the running new program's as that program's own updates do."""
import ctypes as ct

import numpy as np

from .. import layout as L
from ..errors import BpfError
from ..loader import bpfsys
from ..loader.maps import Map
from .delta import OP_DEL, OP_NEW, Table, as_rows, carray, raw_t

CONVERTIBLE = {bpfsys.MAP_HASH: "hash", bpfsys.MAP_ARRAY: "array", bpfsys.MAP_LRU_HASH: "lru_hash"}
RESULTS = {1: "inserted", 2: "merged", 3: "deleted", 4: "kept", 5: "conflicts", 6: "missing", 7: "insert_failed"}
MERGE_CHUNK = 16384
MERGE_BATCH = 128                  # records per run of the merge program (a bounded loop)
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


def _merge_code(t: Table) -> str:
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


def _merge_source(tables: list[Table]) -> str:
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


class Merger:
    """Loaded before the swap, run after it: one generated XDP program per converted table. The
    delta records go into an array; each BPF_PROG_TEST_RUN (repeat 1) merges up to MERGE_BATCH
    of them in a bounded loop and writes each record's outcome back into it."""

    def __init__(self, tables: list[Table]):
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
            self.recs.append(Map(rm.map_fd, L.u32, raw_t(ct.sizeof(rm.Leaf))))
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
            recs.update_batch(carray(L.u32, np.arange(n, dtype="<u4").view(np.uint8).reshape(n, 4)),
                              carray(recs.Value, part), n)
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
            out = as_rows(vals, m, rec.shape[1])
            res = out[:, -4:].copy().view("<u4").reshape(-1)
            for code, cnt in zip(*np.unique(res, return_counts=True)):
                name = RESULTS.get(int(code), f"result_{code}")
                counts[name] = counts.get(name, 0) + int(cnt)
            conflicts.append(out[res == 5, :ksz])
        return counts, (np.concatenate(conflicts) if conflicts else np.zeros((0, ksz), np.uint8))

    def close(self):
        self.b.cleanup()

