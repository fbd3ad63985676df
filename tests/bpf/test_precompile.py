"""Programs compiled in forked children (nfx/loader/precompile.py): the process that asked loads
copies and never compiles; a child that fails leaves the compile, and its error, to the process.
Run in a fresh interpreter each: forking needs a single-threaded process."""
import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, os, sys
from nfx.loader import bpfsys, compile as comp
from nfx.loader.compile import compile_source, load
from nfx.loader.image import Copy
from nfx.loader.precompile import Precompiled
from nfx.errors import BpfError

jobs = json.loads(sys.argv[1])
compiled = []
real = comp._compile
comp._compile = lambda *a: compiled.append(a[1].name) or real(*a)      # compiles in this process
out = {}
with Precompiled([(n, d) for n, d, _, _ in jobs]) as pc:
    out["children"] = len(pc.children)
    for name, defines, fn, kind in jobs:
        try:
            b = compile_source(name, defines)
            f = load(b, fn, kind)
            out[name] = {"copy": isinstance(b, Copy), "tag": bytes(bpfsys.prog_info(f.fd)[0].tag).hex()}
        except BpfError as e:
            out[name] = {"error": str(e)[:200]}
out["compiled_here"] = compiled
out["left"] = [p for p in os.listdir("/proc") if p.isdigit() and open(f"/proc/{p}/stat").read().split()[3] == str(os.getpid())]
print(json.dumps(out))
"""


def _run(jobs) -> dict:
    # without the disk cache (loader/imagecache.py): these compile, in children or here
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(jobs)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "NFX_NO_IMAGE_CACHE": "1"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_children_compile_and_the_process_loads_copies():
    jobs = [["stub", None, "nfx_stub", "xdp"], ["switch", None, "nfx_switch", "tc"],
            ["nat", {"NFX_MAX_FLOWS": 1024}, "nfx_nat", "xdp"]]
    out = _run(jobs)
    assert out["children"] == 3
    assert out["compiled_here"] == [] and out["left"] == []
    assert all(out[n]["copy"] for n, *_ in jobs)
    # the same program as a compile in this process gives (the tag hashes the instructions)
    from nfx.loader import bpfsys
    from nfx.loader.compile import compile_source, load
    for name, defines, fn, kind in jobs:
        b = compile_source(name, defines)
        try:
            assert bytes(bpfsys.prog_info(load(b, fn, kind).fd)[0].tag).hex() == out[name]["tag"], name
        finally:
            b.cleanup()


def test_a_failing_child_leaves_the_compile_and_its_error_here():
    out = _run([["nat", {"NFX_MAX_FLOWS": "no_such_identifier"}, "nfx_nat", "xdp"]])
    assert out["children"] == 1 and out["left"] == []
    assert out["compiled_here"] == ["nat.bpf.c"]
    assert "compiling nat.bpf.c failed" in out["nat"]["error"] and "no_such_identifier" in out["nat"]["error"]
