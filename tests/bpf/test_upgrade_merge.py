"""Hot upgrade's conversion machinery on plain maps (no netns): the v2 NAT layout mirror, the
vectorised field conversion, and pass 2's in-kernel merge, with the new program's concurrent
writes simulated by writing the new table between the passes."""
import ctypes as ct
import secrets
from pathlib import Path

import numpy as np
import pytest

from nfx import layout as L
from nfx.loader import bpfsys
from nfx.loader.compile import compile_source, expand_includes
from nfx import upgrade as U
from nfx.upgrade.delta import Table
from nfx.upgrade.merge import Merger
from nfx.paths import BPF_INCLUDE


def test_v2_mirror_matches_header_and_default_is_unchanged():
    import bcc
    text = '#include "nfx_nat.h"\nBPF_ARRAY(m, struct nfx_nat_entry, 1);\n'
    sizes = {}
    for flag in ([], ["-DNFX_NAT_V2=1"]):
        b = bcc.BPF(text=expand_includes(text).encode(), cflags=["-w", f"-I{BPF_INCLUDE}", *flag])
        leaf = b[b"m"].Leaf
        mine = L.NatEntryV2 if flag else L.NatEntry
        assert ct.sizeof(leaf) == ct.sizeof(mine)
        for name, off, size in L.describe(mine):
            assert (getattr(leaf, name).offset, getattr(leaf, name).size) == (off, size), name
        sizes[bool(flag)] = ct.sizeof(leaf)
        b.cleanup()
    assert sizes == {False: 56, True: 64}


def test_nat_v2_program_builds(monkeypatch):
    # a BCC compile (its tables carry their C types), not an earlier process's on-disk image
    monkeypatch.setenv("NFX_NO_IMAGE_CACHE", "1")
    b = compile_source("nat", {"NFX_MAX_FLOWS": 1024, "NFX_NAT_V2": 1})
    try:
        assert ct.sizeof(b[b"nat_fwd"].Leaf) == ct.sizeof(L.NatEntryV2)
    finally:
        b.cleanup()


def test_by_field_conversion_round_trip():
    n = 1000
    rng = np.random.default_rng(3)
    old = rng.integers(0, 256, (n, ct.sizeof(L.NatEntry)), dtype=np.uint8)
    v2 = U.by_field(L.NatEntry, L.NatEntryV2)(old)
    assert v2.shape == (n, ct.sizeof(L.NatEntryV2))
    for i in (0, 17, n - 1):
        a = L.NatEntry.from_buffer_copy(old[i].tobytes())
        b = L.NatEntryV2.from_buffer_copy(v2[i].tobytes())
        assert bytes(a.peer) == bytes(b.peer)
        assert (a.pkts, a.bytes, a.created_ns, a.last_seen_ns, a.tcp_flags) == \
               (b.pkts, b.bytes, b.created_ns, b.last_seen_ns, b.tcp_flags)
        assert b.max_len == 0
    back = U.by_field(L.NatEntryV2, L.NatEntry)(v2)
    assert np.array_equal(back, old)
    with pytest.raises(Exception, match="expected"):
        U.by_field(L.NatEntry, L.NatEntryV2)(v2)


def test_parse_defines():
    assert U.parse_defines(["A=1", "B", "C=\"x\""]) == {"A": "1", "B": 1, "C": '"x"'}


SRC = """
struct k { __u32 a; __u32 b; };
BPF_HASH(old, struct k, struct nfx_nat_entry, 256);
BPF_TABLE_PINNED("hash", struct k, struct nfx_nat_entry_v2, new, 256, "%s");
"""


@pytest.fixture
def table():
    """An old (v1) and a new (v2) table, the new one pinned as the merge program opens it."""
    import bcc
    pin = Path(f"/sys/fs/bpf/nfxmerge{secrets.token_hex(3)}")
    hdr = open(BPF_INCLUDE / "nfx_nat.h").read()
    v2 = hdr[hdr.index("struct nfx_nat_entry {"):]
    v2 = v2[:v2.index("};") + 2].replace("nfx_nat_entry", "nfx_nat_entry_v2")
    text = '#include "nfx_bpf.h"\n#include "nfx_nat.h"\n' + f"#define NFX_NAT_V2 1\n{v2}\n#undef NFX_NAT_V2\n" + SRC % pin
    b = bcc.BPF(text=expand_includes(text).encode(), cflags=["-w", f"-I{BPF_INCLUDE}"])
    try:
        old, new = b[b"old"].map_fd, b[b"new"].map_fd
        t = Table("nat_fwd", U.CONVERSIONS["nat-v2"][1]["nat_fwd"], old, bpfsys.map_info(old), new,
                     bpfsys.map_info(new), pin)
        assert (t.osz, t.nsz) == (56, 64)
        m = Merger([t])
        yield t, m
        m.close()
    finally:
        b.cleanup()
        pin.unlink(missing_ok=True)


def key(i):
    k = (ct.c_uint8 * 8)()
    ct.memmove(k, int(i).to_bytes(8, "little"), 8)
    return k


def entry(T, i, pkts, last=100, flags=0, created=7):
    e = T()
    e.peer.saddr, e.peer.dport = 1000 + i, 2000 + i
    e.pkts, e.bytes, e.created_ns, e.last_seen_ns, e.tcp_flags = pkts, pkts * 60, created, last, flags
    return e


def typed(t):
    from nfx.loader.maps import Map
    return Map(t.new.fd, ct.c_uint8 * 8, L.NatEntryV2)


def test_pass2_merges_in_the_kernel(table):
    t, merger = table
    V1, V2 = L.NatEntry, L.NatEntryV2
    new = typed(t)
    for i in range(6):
        t.old.put(key(i), entry(V1, i, pkts=10))
    assert t.pass1()["entries"] == 6
    # the old program keeps running until the swap ...
    t.old.put(key(0), entry(V1, 0, pkts=15, last=300, flags=2))       # changed
    t.old.put(key(1), entry(V1, 1, pkts=12))                          # changed, new program too
    t.old.delete(key(2))                                              # evicted, untouched by new
    t.old.delete(key(3))                                              # evicted, but new program used it
    t.old.put(key(10), entry(V1, 10, pkts=4))                         # created after the copy
    t.old.put(key(11), entry(V1, 11, pkts=5))                         # ... and by the new program too
    # ... and the new program has started on its own copy
    n1 = new.get(key(1))
    n1.pkts += 3
    n1.bytes += 180
    n1.max_len = 99
    n1.last_seen_ns = 500
    t.new.put(key(1), n1)
    n3 = new.get(key(3))
    n3.pkts += 1
    t.new.put(key(3), n3)
    t.new.put(key(11), entry(V2, 11, pkts=1, created=999))
    d = t.delta(*t.snapshot())
    assert (len(d["new"]), len(d["chg_now"]), len(d["del"])) == (2, 2, 2)
    counts, clash = merger.apply(0, t.records(d))
    assert counts == {"inserted": 1, "merged": 2, "deleted": 1, "kept": 1, "conflicts": 1}
    assert [bytes(c) for c in clash] == [bytes(key(11))]

    e0 = new.get(key(0))
    assert (e0.pkts, e0.bytes, e0.last_seen_ns, e0.tcp_flags, e0.created_ns) == (15, 900, 300, 2, 7)
    e1 = new.get(key(1))          # old's +2 added to new's +3; new's later last_seen and max_len kept
    assert (e1.pkts, e1.bytes, e1.last_seen_ns, e1.max_len) == (15, 900, 500, 99)
    assert new.get(key(2)) is None
    assert new.get(key(3)).pkts == 11
    assert new.get(key(10)).pkts == 4 and new.get(key(10)).peer.saddr == 1010
    assert new.get(key(11)).created_ns == 999          # the new program's entry wins
    assert new.get(key(4)).pkts == 10
    t.adopt(d)
    # a second pass with nothing new changes nothing
    d2 = t.delta(*t.snapshot())
    assert (len(d2["new"]), len(d2["chg_now"]), len(d2["del"])) == (0, 0, 0)


def test_pass2_many_records_in_chunks(table):
    t, merger = table
    V1 = L.NatEntry
    for i in range(200):
        t.old.put(key(i), entry(V1, i, pkts=1))
    t.pass1()
    for i in range(200):
        t.old.put(key(i), entry(V1, i, pkts=1 + i))
    d = t.delta(*t.snapshot())
    counts, _ = merger.apply(0, t.records(d))
    assert counts == {"merged": 199}
    new = typed(t)
    assert all(new.get(key(i)).pkts == 1 + i for i in range(200))
