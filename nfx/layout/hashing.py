"""The layout hash a state file records: of the layout headers its NF's program includes, so a
file is refused by an instance built from other layouts, and only by those (editing the sink's
struct leaves NAT files valid)."""
import hashlib
import os
import re
from pathlib import Path

from ..errors import BpfError
from ..paths import BPF_DIR

# the project's own includes (system headers use <...>)
QUOTED_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)

# one header per concern, each mirrored by nfx/layout/<concern>.py. nfx_bpf.h, nfx_nf.h, nfx_dup.h,
# nfx_stamp.h, nfx_sw_stamp.h and nfx_st_write.h hold code, not layouts: their includes are
# followed, their text is not hashed (as before the split)
LAYOUT_HEADERS = ("nfx_flow.h", "nfx_gate.h", "nfx_move.h", "nfx_statelet.h", "nfx_nat.h", "nfx_ids.h",
                  "nfx_switch.h", "nfx_bench.h", "nfx_hsl.h", "nfx_keyread.h")

def includes(kind: str, bpf_dir: Path = BPF_DIR) -> list[str]:
    """The project headers bpf/<kind>.bpf.c includes, directly or through another, first seen first."""
    seen: list[str] = []

    def walk(path: Path):
        if not path.exists():
            raise BpfError(f"{path} not found: no layout for NF kind {kind!r}")
        for inc in QUOTED_INCLUDE.findall(path.read_text()):
            if inc not in seen:
                seen.append(inc)
                walk(bpf_dir / "include" / inc)

    walk(bpf_dir / f"{kind}.bpf.c")
    return seen


# (kind, bpf dir) -> (the files the hash read, their stamp then, the hash)
_HASHES: dict[tuple[str, str], tuple[list[str], tuple, str]] = {}


def _stamp(files: list[str]) -> tuple:
    """What the hash depends on, cheaply: the size and mtime of exactly the files it read (the
    program and the headers it includes; a new include changes the file that names it). os.stat
    on those alone, not a glob and pathlib over every header: 0.15 ms a call here, 0.3 ms with
    the CPUs carrying traffic, and every state chunk asks."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def layout_hash(kind: str, bpf_dir: Path = BPF_DIR) -> str:
    """Hash of the text of the layout headers bpf/<kind>.bpf.c includes. Every state chunk asks
    for it: kept per process, and worked out again only when a file it read changes."""
    key = (kind, str(bpf_dir))
    hit = _HASHES.get(key)
    if hit and _stamp(hit[0]) == hit[1]:
        return hit[2]
    heads = includes(kind, bpf_dir)
    files = [str(bpf_dir / f"{kind}.bpf.c")] + [str(bpf_dir / "include" / name) for name in heads]
    stamp = _stamp(files)
    h = hashlib.sha256()
    for name in sorted(set(heads) & set(LAYOUT_HEADERS)):
        h.update(name.encode() + b"\0" + (bpf_dir / "include" / name).read_bytes() + b"\0")
    _HASHES[key] = (files, stamp, h.hexdigest()[:16])
    return _HASHES[key][2]
