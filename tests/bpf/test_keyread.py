"""Keyed reads (bpf/keyread.bpf.c, nfx/loader/keyread.py, Map.lookup_many): the reader gives,
for any list of keys, exactly what a lookup syscall a key gives (values, which were found, in
the order asked), over more keys than one request carries; LRU maps too; a per-CPU map gets no
reader and reads key by key; a request past KR_MAX keys is refused whole; a reader that fails
leaves the read to the syscalls; a reader built for other sizes does not load."""
import ctypes as ct
import os

import pytest

from nfx.errors import BpfError
from nfx.layout import KR_MAX, KrHead
from nfx.loader import bpfsys
from nfx.loader.keyread import KeyReader
from nfx.loader.maps import Map

KS, VS, N = 16, 56, 700
Key, Value = ct.c_uint8 * KS, ct.c_uint8 * VS


def _key(i: int) -> bytes:
    return i.to_bytes(4, "little") * 4


def _map(kind: int, n: int = N) -> Map:
    fd = bpfsys.map_create(bpfsys.MapInfo(type=kind, key_size=KS, value_size=VS, max_entries=4096, name=b"kr_t"))
    m = Map(fd, Key, Value, owns_fd=True)
    for i in range(n):
        val = Value.from_buffer_copy((i * 7919).to_bytes(8, "little") * (VS // 8))
        assert bpfsys.map_elem(bpfsys.MAP_UPDATE_ELEM, fd, Key.from_buffer_copy(_key(i)), val) == 0
    return m


def _ask(m: Map, ids: list[int]):
    keys = (Key * len(ids)).from_buffer_copy(b"".join(_key(i) for i in ids))
    n, k, v = m.lookup_many(keys)
    return n, bytes(k)[:n * KS], bytes(v)[:n * VS]


# present and missing keys mixed, out of order, more than one request's worth
ASK = [3, 9999, 0, 499, 250, 12345, 17] + list(range(100, 100 + 2 * KR_MAX + 5)) + [N + 1]


@pytest.mark.parametrize("kind", [bpfsys.MAP_HASH, bpfsys.MAP_LRU_HASH], ids=["hash", "lru_hash"])
def test_keyed_read_equals_a_lookup_a_key(kind):
    m = _map(kind)
    try:
        by_syscall = _ask(m, ASK)
        assert by_syscall[0] == sum(1 for i in ASK if i < N)
        assert m.prepare_keyed_reads()
        assert _ask(m, ASK) == by_syscall
        assert _ask(m, [9999]) == (0, b"", b"")
    finally:
        m.close()


def test_a_per_cpu_map_has_no_reader_and_reads_key_by_key():
    fd = bpfsys.map_create(bpfsys.MapInfo(type=bpfsys.MAP_PERCPU_HASH, key_size=KS, value_size=8,
                                          max_entries=64, name=b"kr_p"))
    m = Map(fd, Key, ct.c_uint64, owns_fd=True)
    try:
        assert not m.prepare_keyed_reads()
        assert m.lookup_many((Key * 1).from_buffer_copy(_key(1)))[0] == 0
    finally:
        m.close()


def test_a_request_past_the_most_keys_is_refused_whole():
    m = _map(bpfsys.MAP_HASH)
    try:
        assert m.prepare_keyed_reads()
        r = m._reader.req
        r.head = KrHead(n=KR_MAX + 1)
        bpfsys.prog_run_ctx(m._reader.fd, r)
        assert (r.head.error, r.head.found) == (1, 0)
    finally:
        m.close()


def test_a_reader_that_fails_leaves_the_read_to_the_syscalls(monkeypatch, caplog):
    m = _map(bpfsys.MAP_HASH)
    try:
        by_syscall = _ask(m, ASK)
        assert m.prepare_keyed_reads()

        def refuse(*a):
            raise BpfError("refused")
        monkeypatch.setattr(KeyReader, "read", refuse)
        assert _ask(m, ASK) == by_syscall
        assert m._reader is False and "keyed reads failed" in caplog.text
    finally:
        m.close()


def test_the_reader_is_checked_against_the_map_it_reads():
    # built for values of VS bytes (the build the other tests use: no compile of its own),
    # pointed at a map of 8-byte values: the verifier refuses it
    fd = bpfsys.map_create(bpfsys.MapInfo(type=bpfsys.MAP_HASH, key_size=KS, value_size=8,
                                          max_entries=8, name=b"kr_s"))
    try:
        with pytest.raises(BpfError, match="cannot load nfx_keyread"):
            KeyReader(fd, KS, VS)
    finally:
        os.close(fd)


def test_a_thread_has_a_child_process_compile_the_reader(monkeypatch, tmp_path):
    # BCC compiles in threads crash: from a thread, a cold cache is filled by a child process
    import threading

    from nfx.loader import compile as comp
    from nfx.loader import imagecache
    from nfx.loader import keyread as KR
    monkeypatch.setattr(imagecache, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(comp, "_compiled", {})
    compiled_here = []
    monkeypatch.setattr(comp, "_compile", lambda *a: compiled_here.append(a) or pytest.fail("compiled in a thread"))
    m = _map(bpfsys.MAP_HASH, 10)
    out = []
    try:
        t = threading.Thread(target=lambda: out.append(m.prepare_keyed_reads()))
        t.start()
        t.join()
        assert out == [True] and not compiled_here
        assert list(tmp_path.glob("*.img")), "the child's image is in the cache"
        assert _ask(m, [1, 2, 99]) == _ask_by_syscall(m, [1, 2, 99])
    finally:
        m.close()


def _ask_by_syscall(m: Map, ids: list[int]):
    reader, m._reader = m._reader, False
    try:
        return _ask(m, ids)
    finally:
        m._reader = reader
