"""Copies verified in threads (nfx/loader/parallel.py): each copy has its own maps and program,
the same instructions as the compile; a program nobody compiled is left to the caller (no
compile in a thread); copies nobody took are closed. Run in a fresh interpreter: the children
that compile need a single-threaded process."""
import json
import subprocess
import sys

from nfx.loader import compile as comp
from nfx.loader.parallel import Preloads

SCRIPT = r"""
import json, os
from nfx.loader import bpfsys, compile as comp
from nfx.loader.compile import compile_source, load
from nfx.loader.parallel import Preloads
from nfx.loader.precompile import Precompiled

defines = {"NFX_SW_MAX_EXACT": 512}
compiled = []
real = comp._compile
comp._compile = lambda *a: compiled.append(a[1].name) or real(*a)
fds = lambda: len(os.listdir("/proc/self/fd"))
out = {}
with Precompiled([("switch", defines)]):
    before = fds()
    with Preloads("switch", defines, "nfx_switch", "tc", 3) as pl:
        got = [pl.take(), pl.take()]
    out["after_close"] = fds() - before
    out["held"] = sum(len(b.fds) + len(b.funcs) for b, _ in got)
    out["extra"] = pl.take() is None
    out["maps_distinct"] = len({fd for b, _ in got for fd in b.fds.values()}) == sum(len(b.fds) for b, _ in got)
    out["prog_ids"] = [bpfsys.prog_info(f.fd)[0].id for _, f in got]
    out["tags"] = [bytes(bpfsys.prog_info(f.fd)[0].tag).hex() for _, f in got]
b = compile_source("switch", defines)          # the Image's copy, as the caller would load it
out["tag_here"] = bytes(bpfsys.prog_info(load(b, "nfx_switch", "tc").fd)[0].tag).hex()
out["compiled_here"] = compiled
print(json.dumps(out))
"""


def test_threads_load_distinct_copies_and_close_the_rest():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["compiled_here"] == []                  # the child compiled; threads only loaded
    assert out["maps_distinct"] and len(set(out["prog_ids"])) == 2
    assert out["tags"] == [out["tag_here"]] * 2        # the same instructions as the compile's copy
    assert out["extra"]                                # asked for 3, took 2, a third take: none
    # the untaken copy's maps and program are closed; only the two taken stay open
    assert out["after_close"] == out["held"]


def test_a_program_nobody_compiled_is_left_to_the_caller(monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("compiled in a loader thread")
    monkeypatch.setattr(comp, "_compile", no_compile)
    with Preloads("stub", {"NFX_NEVER_COMPILED": 1}, "nfx_stub", "xdp", 2) as pl:
        assert pl.take() is None and pl.take() is None and pl.take() is None
