"""Compiled programs on disk (nfx/loader/imagecache.py): the first process compiles and keeps the
Image; the next loads it, BTF made again, without clang, and its copy is the same program (the
kernel's tag hashes the instructions) with working maps; a damaged entry, or one others may
write, is compiled again. Each run is a fresh interpreter with its own cache directory."""
import json
import os
import subprocess
import sys

from nfx.loader import imagecache
from nfx.loader.compile import source_key

SCRIPT = r"""
import json, sys
from pathlib import Path
from nfx.loader import bpfsys, compile as comp, imagecache
from nfx.loader.compile import compile_source, load
from nfx.loader.image import Copy
import ctypes as ct

imagecache.CACHE_DIR = Path(sys.argv[1])
compiled = []
real = comp._compile
comp._compile = lambda *a: compiled.append(a[1].name) or real(*a)
b = compile_source("gen")
f = load(b, "nfx_gen", "xdp")
# a map of the copy works: its BTF-typed value can be written and read back
fd = b["gen_cfg"].map_fd
info = bpfsys.map_info(fd)
key, val, back = ct.c_uint32(0), ct.create_string_buffer(b"\x07" * info.value_size), ct.create_string_buffer(info.value_size)
assert bpfsys.map_elem(bpfsys.MAP_UPDATE_ELEM, fd, key, val) == 0
assert bpfsys.map_elem(bpfsys.MAP_LOOKUP_ELEM, fd, key, back) == 0 and back.raw == val.raw[:info.value_size]
print(json.dumps({"compiled_here": compiled, "copy": isinstance(b, Copy),
                  "tag": bytes(bpfsys.prog_info(f.fd)[0].tag).hex(), "btf": bool(info.btf_id),
                  "entries": sorted(p.name for p in imagecache.CACHE_DIR.glob("*.img"))}))
"""


def _run(cache) -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], capture_output=True, text=True, timeout=180,
                       env={k: v for k, v in os.environ.items() if k != "NFX_NO_IMAGE_CACHE"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_next_process_loads_the_same_program_and_a_bad_entry_is_not_read(tmp_path, monkeypatch):
    cache = tmp_path / "images"
    first = _run(cache)
    assert first["compiled_here"] == ["gen.bpf.c"] and len(first["entries"]) == 1
    second = _run(cache)
    assert second["compiled_here"] == [] and second["copy"] and second["btf"]
    assert second["tag"] == first["tag"]
    # here: what the next process would read of a damaged entry, or of one others may write
    monkeypatch.setattr(imagecache, "CACHE_DIR", cache)
    key = source_key("gen")[3]
    entry = cache / first["entries"][0]
    assert imagecache.entry_name(key) == entry.name
    good = entry.read_bytes()
    img = imagecache.load(key)
    assert img is not None and set(img.funcs) == {"nfx_gen", "nfx_gen_tc"}
    img.close()
    entry.write_bytes(good[:100])                              # cut short
    assert imagecache.load(key) is None
    entry.write_bytes(good)
    os.chmod(entry, 0o666)                                     # others may write it: never trusted
    assert imagecache.load(key) is None
