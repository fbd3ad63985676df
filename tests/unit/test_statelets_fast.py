"""The bulk statelet path against the one-at-a-time reference (no kernel): replay.apply (fastapply)
gives the same entries, byte for byte, and the same counts as replay.apply_slow on random streams
full of the hard cases (deletions, re-created incarnations, partial statelets before a creation,
racing counters, whole values, a key touched by many statelets in one batch); the bulk parser
refuses what parse_record refuses; the vectorised ring walk finds exactly the records the
record-by-record walk finds, and gives up (correctly) when a value looks like a header."""
import random
import struct

import pytest

from nfx import layout as L
from nfx.errors import BadInput
from nfx.loader.ringmap import BUSY, DISCARD, MmapRing
from nfx.state import replay as R
from nfx.state import statelets as S
from nfx.state import stbatch as SB
from tests.unit.test_statelets_replay import FULL, create, delete, entry, touch

KINDS = {"nat": [1, 2, 3], "ids": [4, 5, 6]}


def rand_update(rng: random.Random, t: int, keys: list[bytes]) -> S.Update:
    s = S.SCHEMAS[t]
    key = rng.choice(keys)
    inc = rng.choice([1, 2, 3]) if s.incarnation else 0
    if rng.random() < 0.2:
        return S.Update(t, L.StOp.DEL, key, 0, (), inc)
    whole = s.fields[0].name is None
    mask = s.full_mask if whole or rng.random() < 0.35 else rng.randrange(1, s.full_mask + 1)
    vals = []
    for f in s.fields:
        if not mask >> f.bit & 1:
            continue
        if f.flow:
            vals += [rng.choice([7, 9]), rng.choice([1, 2])]
        elif f.name == s.incarnation:
            tag = inc if rng.random() < 0.9 else rng.choice([1, 2, 3])
            vals.append((tag << L.STATELET_INC_SHIFT) + rng.randrange(1 << L.STATELET_INC_SHIFT))
        elif f.name is None:
            vals.append(rng.randrange(3))
        else:
            vals.append(rng.randrange(12))
    return S.Update(t, L.StOp.SET, key, mask, tuple(vals), inc)


def rand_stream(rng: random.Random, kind: str, n: int) -> list[bytes]:
    keys = {t: [bytes(rng.randrange(256) for _ in range(ct_size(t))) for _ in range(rng.choice([1, 3, 6]))]
            for t in KINDS[kind]}
    ups = [rand_update(rng, t, keys[t]) for t in (rng.choice(KINDS[kind]) for _ in range(n))]
    recs, i = [], 0
    while i < len(ups):                              # 1-3 statelets per record
        k = rng.randrange(1, 4)
        recs.append(b"".join(S.encode(u) for u in ups[i:i + k]))
        i += k
    return recs


def ct_size(t: int) -> int:
    import ctypes as ct
    return ct.sizeof(S.SCHEMAS[t].key)


def same(a: R.Tables, b: R.Tables) -> bool:
    return all({k: bytes(v) for k, v in a.data[n].items()} == {k: bytes(v) for k, v in b.data[n].items()} for n in a.data)


COUNTED = ("applied", "stale", "deleted", "absent_deletes", "orphans", "statelets", "records")


@pytest.mark.parametrize("kind", ["nat", "ids"])
def test_fast_equals_slow_on_random_streams(kind):
    rng = random.Random(1234)
    paths = set()
    for trial in range(300):
        start = R.Tables(kind)
        R.apply_slow(start, rand_stream(rng, kind, rng.randrange(0, 30)))
        chunks = start.chunks()
        fast, slow = R.Tables.from_chunks(chunks), R.Tables.from_chunks(chunks)
        stream = rand_stream(rng, kind, rng.randrange(1, 120))
        rf, rs = R.apply(fast, stream), R.apply_slow(slow, stream)
        assert same(fast, slow), f"trial {trial}"
        assert {k: rf[k] for k in COUNTED} == {k: rs[k] for k in COUNTED}, f"trial {trial}"
        paths.add((rf["deleted"] > 0, rf["stale"] > 0, rf["orphans"] > 0))
    assert len(paths) >= 6                 # the streams did reach the hard cases


def test_batches_in_sequence_equal_slow_batches():
    rng = random.Random(99)
    for _ in range(50):
        stream = rand_stream(rng, "nat", 200)
        cut = sorted(rng.sample(range(1, len(stream)), 3))
        parts = [stream[a:b] for a, b in zip([0] + cut, cut + [len(stream)])]
        fast, slow = R.Tables("nat"), R.Tables("nat")
        for p in parts:
            rf, rs = R.apply(fast, p), R.apply_slow(slow, p)
            assert {k: rf[k] for k in COUNTED} == {k: rs[k] for k in COUNTED}
        assert same(fast, slow)


def test_named_cases_take_the_bulk_path_and_agree():
    # many touches of one entry in one batch, racing counters, flags, a re-creation, late
    # statelets of an old incarnation, a partial statelet before its creation, deletions
    streams = [
        [create(10)] + [touch(p, 10 * p, 10 + p, flags=p & 3) for p in range(2, 40)],
        [create(10, pkts=5, nbytes=500), touch(6, 660, 20), touch(6, 600, 19), touch(8, 700, 18)],
        [create(10), touch(2, 2, 11), delete(10), create(20, pkts=1, nbytes=7), touch(2, 9, 21, created=20)],
        [touch(7, 70, 3, created=30), create(30), touch(8, 80, 31, created=30)],
        [touch(7, 70, 3), delete(10), create(11)],
        [create(10), delete(10), delete(10), touch(3, 3, 3)],
    ]
    for base in ([], [create(10, pkts=4, nbytes=40)], [create(20)]):
        for st in streams:
            fast, slow = R.Tables("nat"), R.Tables("nat")
            R.apply_slow(fast, base)
            R.apply_slow(slow, base)
            rf, rs = R.apply(fast, st), R.apply_slow(slow, st)
            assert same(fast, slow), (base, st)
            assert {k: rf[k] for k in COUNTED} == {k: rs[k] for k in COUNTED}, (base, st)
    t = R.Tables("nat")
    R.apply(t, streams[0])
    assert (entry(t).pkts, entry(t).bytes, entry(t).tcp_flags) == (39, 390, 3)


def test_ids_host_updated_by_many_flows_out_of_order():
    host = bytes(L.u32(0x0201000A))
    hb = lambda pkts, flows: S.Update(L.StTable.IDS_HOSTS, L.StOp.SET, host, 0b111, (pkts, pkts * 10, flows))
    full = S.Update(L.StTable.IDS_HOSTS, L.StOp.SET, host, 0x3f, (1, 10, 1, 1, 0, 0))
    # CPUs race: pkts arrive 5, 3, 7, 6; every host field is a counter: the max wins
    stream = [full, hb(5, 2), hb(3, 9), hb(7, 3), hb(6, 8)]
    fast, slow = R.Tables("ids"), R.Tables("ids")
    rf, rs = R.apply(fast, stream), R.apply_slow(slow, stream)
    assert same(fast, slow) and rf["stale"] == rs["stale"] == 2
    v = fast.data["ids_hosts"][host]
    assert (v.pkts, v.bytes, v.flows) == (7, 70, 9)


def test_pad_bytes_travel_and_fresh_entries_have_none():
    t = R.Tables("nat")
    R.apply(t, [create(10)])
    e = entry(t)
    e.pad = 0xABCD                                  # a snapshot's pad survives replay
    R.apply(t, [touch(2, 2, 11)])
    assert entry(t).pad == 0xABCD and entry(t).pkts == 2
    u = R.Tables("nat")
    R.apply(u, [create(10)])
    assert entry(u).pad == 0


@pytest.mark.parametrize("bad", [
    b"\x01" * 7,
    struct.pack("<BBBBI", 99, 1, 0, 0, 0) + bytes(16),
    struct.pack("<BBBBI", 1, 1, 3, FULL, 0) + bytes(40),
    struct.pack("<BBBBI", 1, 1, 0, 0, 0) + bytes(8),
    struct.pack("<BBBBI", 1, 3, 0, 0, 0) + bytes(16),
    struct.pack("<BBBBI", 3, 2, 0, 0, 5) + bytes(8),
    S.encode(create(1))[:-8],
])
def test_bulk_parser_refuses_what_parse_record_refuses(bad):
    good = S.encode(create(2))
    with pytest.raises(BadInput):
        SB.parse_records([good, bad, good])
    with pytest.raises(BadInput):
        R.apply(R.Tables("nat"), [good, bad])


def test_bulk_parse_equals_parse_record():
    rng = random.Random(5)
    recs = rand_stream(rng, "ids", 500) + rand_stream(rng, "nat", 500)
    b = SB.parse_records(recs)
    ups = [u for r in recs for u in S.parse_record(r)]
    assert len(b) == len(ups) and b.records == len(recs)
    assert b.table.tolist() == [u.table for u in ups] and b.mask.tolist() == [u.mask for u in ups]
    assert b.inc.tolist() == [u.inc for u in ups] and b.op.tolist() == [u.op for u in ups]
    assert b.raw_records() == recs


# ---- the ring walk ----------------------------------------------------------------------------------
def ring_span(records: list[bytes], cons: int, size: int = 1 << 16, c: int = 2, flags=None) -> bytes:
    """Records laid out as the kernel writes them from consumer position `cons` (header: length
    with flags, then the page offset: the header's page in the ring plus c)."""
    out, pos = bytearray(), cons
    for i, r in enumerate(records):
        f = flags[i] if flags else 0
        out += struct.pack("<II", len(r) | f, (((pos & (size - 1)) >> 12) + c)) + r
        out += bytes(-len(r) % 8)
        pos += 8 + len(r) + (-len(r) % 8)
    return bytes(out)


def ring(size: int = 1 << 16) -> MmapRing:
    r = MmapRing.__new__(MmapRing)
    r.size, r.mask, r._fd, r._cons, r._data, r._page = size, size - 1, None, None, None, 4096
    return r


def test_vectorised_ring_walk_equals_the_record_walk():
    rng = random.Random(3)
    recs = rand_stream(rng, "nat", 3000)
    rg = ring()
    for cons in (0, 4096 * 3 + 8, (1 << 16) - 64):
        span = ring_span(recs, cons)
        offs, lens, at = rg._walk_np(span, cons, 0)
        o2, l2, at2 = rg._walk(span, 0)
        assert list(offs) == o2 and list(lens) == l2 and at == at2 == len(span)
        # a cap: the same records either way, whole ones only
        offs, lens, at = rg._walk_np(span, cons, 10000)
        o2, l2, at2 = rg._walk(span, 10000)
        assert list(offs) == o2 and list(lens) == l2 and at == at2
    # a record still being written stops both; a discarded one is skipped by both
    flags = [0] * len(recs)
    flags[5], flags[900] = DISCARD, BUSY
    span = ring_span(recs, 0, flags=flags)
    offs, lens, at = rg._walk_np(span, 0, 0)
    o2, l2, at2 = rg._walk(span, 0)
    assert list(offs) == o2 and at == at2 and len(o2) == 899


def test_a_value_that_looks_like_a_header_sends_the_walk_back_to_the_loop():
    rg = ring()
    fake = struct.pack("<II", 16, 2)                  # length 16, page 0 + 2: a header's look
    rec = S.encode(S.Update(L.StTable.NAT_PORTS, L.StOp.SET, bytes(8), 1, struct.unpack("<QQ", fake + bytes(8))))
    span = ring_span([rec] * 300, 0)
    assert rg._walk_np(span, 0, 0) is None          # the chain does not hold: not trusted
    buf, offs, lens = span, *rg._walk(span, 0)[:2]
    assert [bytes(buf[o:o + n]) for o, n in zip(offs, lens)] == [rec] * 300
