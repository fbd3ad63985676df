"""Batched sharing's coalescing and replicas on synthetic statelets (no kernel): a flow's
statelets coalesced per entry replay exactly like all of them one by one; batches round-trip;
replicas apply batches in stamp order, keep multi-flow entries per sender, and select by filter."""
import random

from nfx import layout as L
from nfx.filter import parse
from nfx.flows import make_key
from nfx.state import replay as R
from nfx.state import statelets as S
from nfx.state.coalesce import Delta, decode_batches, encode_batch, merge
from nfx.state.replicas import Replicas, chunks_blob

from .test_statelets_replay import MS, create, delete, touch

B = make_key("10.0.1.3", "10.0.2.2", 6000, 53, "udp")


def replayed(ups):
    t = R.Tables("nat")
    R.apply_slow(t, list(ups), {})
    return {k: bytes(v) for k, v in t.data["nat_fwd"].items()}


def test_coalesced_delta_replays_like_the_statelets_one_by_one():
    rnd = random.Random(7)
    for trial in range(200):
        ups, pk, nb, last = [create(10)], 1, 100, 10
        for _ in range(rnd.randrange(1, 12)):
            pk += 1
            nb += rnd.randrange(40, 1500)
            last += rnd.randrange(0, 3)
            ups.append(touch(pk, nb, last, flags=rnd.choice([None, L.TCP_SYN, 0x10])))
        if rnd.random() < 0.2:
            ups.append(delete(10))
        if rnd.random() < 0.2:
            ups.append(create(20, pkts=1, nbytes=60))     # a new incarnation under the same key
        cut = rnd.randrange(1, len(ups))                  # a batch boundary: base before, delta after
        d = Delta()
        d.add(ups[cut:])
        assert len(d.entries) == 1
        assert replayed(ups[:cut] + list(d.entries.values())) == replayed(ups), (trial, ups)


def test_merge_keeps_counters_by_max_and_flags_by_or():
    a = touch(5, 500, 11, flags=L.TCP_SYN)
    b = touch(4, 400, 12, flags=0x10)          # an older counter (another CPU's add) after it
    m = merge(a, b)
    f = S.fields_of(m)
    assert f["pkts"] == 5 and f["bytes"] == 500 and f["tcp_flags"] == L.TCP_SYN | 0x10
    assert f["last_seen_ns"] == 12 * MS


def test_batches_round_trip():
    d = Delta()
    d.add([create(10), touch(2, 200, 11)])
    blob = encode_batch(bytes(make_key("10.0.1.2", "10.0.2.2", 5000, 53, "udp")), 30, 2, d.record()) + \
        encode_batch(bytes(B), 0, 1, b"")
    got = list(decode_batches(blob))
    assert [(b.stamp, b.packets) for b in got] == [(30, 2), (0, 1)]
    assert got[0].updates == list(d.entries.values()) and got[1].updates == []


def test_replicas_apply_in_stamp_order_and_select_by_filter():
    r = Replicas("nat")
    fa = bytes(make_key("10.0.1.2", "10.0.2.2", 5000, 53, "udp"))
    d1 = Delta()
    d1.add([create(10), touch(30, 3000, 11)])
    d2 = Delta()
    d2.add([touch(60, 6000, 12)])
    db = Delta()
    db.add([create(10, key=B)])
    assert r.apply("nf0", encode_batch(fa, 30, 30, d1.record()) + encode_batch(bytes(B), 1, 1, db.record()))["batches"] == 2
    assert r.apply("nf0", encode_batch(fa, 60, 30, d2.record()))["batches"] == 1
    # a batch older than what the replica holds changes nothing
    assert r.apply("nf1", encode_batch(fa, 30, 30, d1.record()))["stale"] == 1
    got = r.select(parse("sport=5000"), "nf0")
    fwd = [c for c in got if c.table == "nat_fwd"]
    assert sum(c.count for c in fwd) == 1
    v = L.NatEntry.from_buffer_copy(bytes(fwd[0].values))
    assert v.pkts == 60 and v.bytes == 6000
    assert sum(c.count for c in r.select(parse(None), "nf0") if c.table == "nat_fwd") == 2


def test_replica_base_then_batches():
    snap = R.Tables("nat")
    R.apply_slow(snap, [create(10), touch(7, 700, 11)], {})
    r = Replicas("nat")
    assert r.base("nf2", chunks_blob(snap.chunks())) == 1
    d = Delta()
    d.add([touch(9, 900, 13)])
    r.apply("nf2", encode_batch(bytes(make_key("10.0.1.2", "10.0.2.2", 5000, 53, "udp")), 9, 2, d.record()))
    fwd = [c for c in r.select(parse(None), "nf2") if c.table == "nat_fwd"]
    assert L.NatEntry.from_buffer_copy(bytes(fwd[0].values)).pkts == 9
    assert r.counts["orphans"] == 0


def test_replicas_select_only_the_sources_flows():
    """One store for the cluster's per-flow entries, but a move from nf0 takes nf0's flows only."""
    r = Replicas("nat")
    da, db = Delta(), Delta()
    da.add([create(10)])
    db.add([create(10, key=B)])
    fa = bytes(make_key("10.0.1.2", "10.0.2.2", 5000, 53, "udp"))
    r.apply("nf0", encode_batch(fa, 1, 1, da.record()))
    r.apply("nf2", encode_batch(bytes(B), 1, 1, db.record()))
    got = [c for c in r.select(parse(None), "nf0") if c.table == "nat_fwd"]
    assert sum(c.count for c in got) == 1 and bytes(got[0].keys) == fa
    # after a move nf0 -> nf2, nf2's batches for the flow make it nf2's
    d2 = Delta()
    d2.add([touch(5, 500, 12)])
    r.apply("nf2", encode_batch(fa, 5, 4, d2.record()))
    assert sum(c.count for c in r.select(parse(None), "nf0") if c.table == "nat_fwd") == 0
    assert sum(c.count for c in r.select(parse(None), "nf2") if c.table == "nat_fwd") == 2


def test_a_large_base_goes_in_pieces_that_add_up():
    from nfx.state.replicas import blob_pieces
    snap = R.Tables("nat")
    R.apply_slow(snap, [create(10, key=make_key("10.0.1.2", "10.0.2.2", 1000 + i, 53, "udp")) for i in range(3000)], {})
    pieces = blob_pieces(snap.chunks(), 64 << 10)
    assert len(pieces) > 2 and all(len(p) <= (64 << 10) + 4096 for p in pieces)
    r = Replicas("nat")
    r.base("nf0", pieces[0])
    for p in pieces[1:]:
        r.base("nf0", p, replace=False)
    assert r.entries()["per_flow"] == 3000


def test_forget_drops_a_departed_flows_replicas_and_the_port_it_owned():
    """A move across clusters: the flows' replicas go from every sender's entries; others stay."""
    import struct
    r = Replicas("nat")
    fa = make_key("10.0.1.2", "10.0.2.2", 5000, 53, "udp")
    da, db = Delta(), Delta()
    port_of_a = S.Update(L.StTable.NAT_PORTS, L.StOp.SET, b"\x0a\x00\x02\x64\x27\x10\x11\x00", 1,
                         struct.unpack("<QQ", bytes(fa)), 0)
    da.add([create(10, key=fa), port_of_a])
    db.add([create(10, key=B)])
    r.apply("nf0", encode_batch(bytes(fa), 1, 1, da.record()) + encode_batch(bytes(B), 1, 1, db.record()))
    assert r.entries()["per_flow"] == 2 and len(r.multi["nf0"].data["nat_ports"]) == 1
    assert r.forget({bytes(fa)}) == 2                  # its nat_fwd entry and the port it owned
    assert r.entries()["per_flow"] == 1 and not r.multi["nf0"].data["nat_ports"]
    assert bytes(fa) not in r.stamps and bytes(B) in r.stamps
    got = [c for c in r.select(parse(None), "nf0") if c.table == "nat_fwd"]
    assert sum(c.count for c in got) == 1 and bytes(got[0].keys) == bytes(B)
    assert r.forget({bytes(fa)}) == 0 and r.counts["forgotten"] == 2
