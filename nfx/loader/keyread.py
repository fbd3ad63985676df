"""Keyed reads in the kernel: a table's entries under a list of keys, up to KR_MAX keys a
syscall (bpf/keyread.bpf.c, a syscall program run by BPF_PROG_TEST_RUN on a request) instead of
one lookup syscall a key. Measured on this VM, idle, 320 keys of a NAT table: 75-93 us in the
program's runs, 156-168 us through Map.lookup_many, against 0.7-1.3 ms a syscall a key (2-3 ms
with the CPUs carrying traffic).

A reader is built for one map: the program is compiled once per key and value size (the image
cache keeps it), and each copy is loaded with that map's fd in place of its placeholder, so the
verifier checks it against the map itself. Plain hash and LRU maps only (keyread.bpf.c says why);
anything else, or a kernel that refuses the program, gets None from `for_map` and the caller
reads key by key as before."""
import ctypes as ct
import json
import logging
import os
import subprocess
import sys
import threading

from ..errors import BpfError, NfxError
from ..layout import KR_MAX, KrHead
from . import bpfsys

log = logging.getLogger("nfx.loader")

KINDS = (bpfsys.MAP_HASH, bpfsys.MAP_LRU_HASH)
CTX_MAX = 0xFFFF                 # a test run's context is at most this many bytes
WORDS = {8: "__u64", 4: "__u32", 2: "__u16", 1: "__u8"}


def request_type(key_size: int, value_size: int):
    """The request as the program lays it out (struct nfx_kr_req), or None if it is too large."""
    class Request(ct.Structure):
        _fields_ = [("head", KrHead), ("keys", ct.c_uint8 * (key_size * KR_MAX)),
                    ("values", ct.c_uint8 * (value_size * KR_MAX)), ("found", ct.c_uint8 * KR_MAX)]
    return Request if ct.sizeof(Request) <= CTX_MAX else None


def defines(key_size: int, value_size: int) -> dict:
    """The build's defines: sizes in the widest word that divides both."""
    word = next(w for w in WORDS if key_size % w == 0 and value_size % w == 0)
    return {"NFX_KR_WORD": WORDS[word], "NFX_KR_KEY_WORDS": key_size // word,
            "NFX_KR_VALUE_WORDS": value_size // word}


def _build(build: dict) -> None:
    """The reader's image for these defines into this process: from the image cache, else
    compiled. BCC compiles in threads crash (loader/precompile.py), and an agent asks from a
    request's thread: there a child process compiles it into the image cache."""
    from .compile import cached, compile_source, from_disk, source_key
    key = source_key("keyread", build)[3]
    if cached(key) or from_disk(key):
        return
    if threading.current_thread() is threading.main_thread():
        compile_source("keyread", build).cleanup()
        return
    from . import imagecache
    r = subprocess.run([sys.executable, "-m", "nfx.loader.keyread", json.dumps(build), str(imagecache.CACHE_DIR)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or not from_disk(key):
        raise NfxError(f"building the keyed reader failed: {(r.stderr or r.stdout).strip()[-500:]}")


class KeyReader:
    """The loaded reader of one map; close() unloads it."""

    def __init__(self, map_fd: int, key_size: int, value_size: int):
        from .compile import compiled_image
        self.key_size, self.value_size = key_size, value_size
        self.Request = request_type(key_size, value_size)
        if self.Request is None:
            raise NfxError(f"a request for {key_size} + {value_size} byte entries exceeds a test run's context")
        self.fd = -1
        build = defines(key_size, value_size)
        _build(build)
        img = compiled_image("keyread", build)
        if img is None:
            raise NfxError("the keyed reader's image is missing after its compile")
        self.fd = bpfsys.prog_load(bpfsys.PROG_SYSCALL, img.insns_for("nfx_keyread", {"kr_table": map_fd}),
                                   "nfx_keyread", img.license, img.kern_version, flags=bpfsys.F_SLEEPABLE)
        self.req = self.Request()
        self.lock = threading.Lock()      # one request buffer

    @classmethod
    def for_map(cls, map_fd: int, info: bpfsys.MapInfo) -> "KeyReader | None":
        """A reader of this map, or None where it cannot have one (and says why in the log)."""
        if info.type not in KINDS:
            return None
        try:
            return cls(map_fd, info.key_size, info.value_size)
        except NfxError as e:
            log.info("map %s is read key by key: %s", info.name.decode(errors="replace"), str(e).splitlines()[0])
            return None

    def read(self, keys: bytes) -> tuple[list[int], bytes]:
        """(the indices of the keys found, their values back to back in that order)."""
        n_all = len(keys) // self.key_size
        found, values = [], []
        with self.lock:
            for lo in range(0, n_all, KR_MAX):
                self._request(keys, lo, min(KR_MAX, n_all - lo), found, values)
        return found, b"".join(values)

    def _request(self, keys: bytes, lo: int, n: int, found: list, values: list) -> None:
        """Keys lo..lo+n-1 in one run: the indices found onto `found`, their values onto `values`."""
        ks, vs, r = self.key_size, self.value_size, self.req
        r.head = KrHead(n=n)
        ct.memmove(r.keys, keys[lo * ks:(lo + n) * ks], n * ks)
        bpfsys.prog_run_ctx(self.fd, r)
        if r.head.error:
            raise BpfError(f"the keyed reader refused a request of {n} keys")
        flags, vals = bytes(r.found[:n]), bytes(r.values)
        for i in range(n):
            if flags[i]:
                found.append(lo + i)
                values.append(vals[i * vs:(i + 1) * vs])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


if __name__ == "__main__":
    # the child _build runs: compile in this process's main thread, into the parent's image cache
    from pathlib import Path

    from . import imagecache
    from .compile import compile_source
    imagecache.CACHE_DIR = Path(sys.argv[2])
    compile_source("keyread", json.loads(sys.argv[1])).cleanup()
