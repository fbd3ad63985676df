"""Statelet records and the replay rules on synthetic streams (no kernel): parse/encode, the
incarnation and pkts order, counters by max, flags by OR, guarded deletions, whole values,
orphans, and malformed records."""
import struct

import pytest

from nfx import layout as L
from nfx.errors import BadInput
from nfx.flows import make_key
from nfx.state import replay as R
from nfx.state import statelets as S

A = make_key("10.0.1.2", "10.0.2.2", 5000, 53, "udp")
PEER = make_key("10.0.2.2", "10.0.2.100", 53, 20001, "udp")
FULL = 0x3f
TOUCH = (1 << L.StfNat.PKTS) | (1 << L.StfNat.BYTES) | (1 << L.StfNat.LAST_SEEN_NS)


def peer_words(k=PEER):
    return struct.unpack("<QQ", bytes(k))


MS = 1 << 20                      # created times a few incarnation tags apart


def create(created, pkts=1, nbytes=100, last=None, flags=0, key=A):
    # field order: peer (2 words), pkts, bytes, created_ns, last_seen_ns, tcp_flags
    return S.Update(L.StTable.NAT_FWD, L.StOp.SET, bytes(key), FULL,
                    (*peer_words(), pkts, nbytes, created * MS, (last or created) * MS, flags),
                    S.inc_tag(created * MS))


def touch(pkts, nbytes, last, flags=None, key=A, created=10):
    mask, vals = TOUCH, (pkts, nbytes, last * MS)
    if flags is not None:
        mask |= 1 << L.StfNat.TCP_FLAGS
        vals += (flags,)
    return S.Update(L.StTable.NAT_FWD, L.StOp.SET, bytes(key), mask, vals, S.inc_tag(created * MS))


def delete(created, key=A):
    return S.Update(L.StTable.NAT_FWD, L.StOp.DEL, bytes(key), 0, (), S.inc_tag(created * MS))


def entry(t: R.Tables, key=A):
    return t.data["nat_fwd"].get(bytes(key))


def test_encode_parse_round_trip_and_dicts():
    ups = [create(10), touch(2, 200, 11, flags=L.TCP_SYN), delete(10)]
    rec = b"".join(S.encode(u) for u in ups)
    assert len(rec) == 8 * ((1 + 2 + 7) + (1 + 2 + 4) + (1 + 2))
    assert S.parse_record(rec) == ups
    assert [S.from_dict(S.to_dict(u)) for u in ups] == ups
    d = S.to_dict(ups[0], seq=3)
    assert d["seq"] == 3 and d["fields"]["peer"]["dport"] == 20001 and d["key"]["sport"] == 5000


@pytest.mark.parametrize("bad", [
    b"\x01" * 7,                                                     # not whole words
    struct.pack("<BBBBI", 99, 1, 0, 0, 0) + bytes(16),               # unknown table
    struct.pack("<BBBBI", 1, 1, 3, FULL, 0) + bytes(40),             # nval disagrees with mask
    struct.pack("<BBBBI", 1, 1, 0, 0, 0) + bytes(8),                 # shorter than the table's key
    struct.pack("<BBBBI", 1, 3, 0, 0, 0) + bytes(16),                # unknown op
    struct.pack("<BBBBI", 3, 2, 0, 0, 5) + bytes(8),                 # an incarnation where none exist
    S.encode(create(1))[:-8],                                        # truncated
])
def test_malformed_records_refused(bad):
    with pytest.raises(BadInput):
        S.parse_record(bad)


def test_in_order_replay_and_old_statelets_change_nothing():
    t = R.Tables("nat")
    stream = [create(10), touch(2, 200, 11), touch(3, 300, 12, flags=L.TCP_ACK), touch(4, 400, 13)]
    r = R.apply(t, stream)
    e = entry(t)
    assert (e.pkts, e.bytes, e.last_seen_ns, e.tcp_flags, e.created_ns, e.peer.dport) == \
        (4, 400, 13 * MS, L.TCP_ACK, 10 * MS, PEER.dport)
    assert r["applied"] == 4 and r["orphans"] == 0
    before = bytes(e)
    r = R.apply(t, stream[:3])                     # old statelets on a newer entry
    assert bytes(entry(t)) == before and r["stale"] == 3
    R.apply(t, stream)                             # idempotent
    assert bytes(entry(t)) == before


def test_counters_take_the_max_under_racing_statelets():
    # two CPUs: both read pkts 6, one before the other's bytes add: the larger bytes is the truth
    t = R.Tables("nat")
    R.apply(t, [create(10, pkts=5, nbytes=500), touch(6, 660, 20), touch(6, 600, 19)])
    assert (entry(t).pkts, entry(t).bytes) == (6, 660)


def test_flags_are_ored():
    t = R.Tables("nat")
    R.apply(t, [create(10, flags=L.TCP_SYN), touch(2, 2, 11, flags=L.TCP_ACK), touch(2, 2, 11, flags=L.TCP_FIN)])
    assert entry(t).tcp_flags == L.TCP_SYN | L.TCP_ACK | L.TCP_FIN


def test_incarnations_and_guarded_deletion():
    t = R.Tables("nat")
    R.apply(t, [create(10), touch(2, 2, 11), delete(10), create(20, pkts=1, nbytes=7)])
    assert (entry(t).created_ns, entry(t).pkts, entry(t).bytes) == (20 * MS, 1, 7)
    # the first incarnation's statelets, replayed late, neither change nor delete the second
    r = R.apply(t, [create(10), touch(5, 500, 15), delete(10), touch(2, 70, 25, created=20)])
    assert (entry(t).created_ns, entry(t).pkts, entry(t).bytes) == (20 * MS, 2, 70)
    assert r["stale"] == 3 and r["deleted"] == 0
    # a snapshot taken after the re-creation, the stream from before the deletion: exact
    snap = R.Tables("nat")
    R.apply(snap, [create(20, pkts=3, nbytes=30)])
    r = R.apply(snap, [touch(5, 500, 15), delete(10), create(20, pkts=1, nbytes=7), touch(4, 40, 26, created=20)])
    assert (entry(snap).pkts, entry(snap).bytes, entry(snap).last_seen_ns) == (4, 40, 26 * MS)
    assert r["orphans"] == 0
    r = R.apply(t, [delete(20)])
    assert entry(t) is None and r["deleted"] == 1
    r = R.apply(t, [delete(20)])
    assert r["absent_deletes"] == 1


def test_partial_statelet_without_its_entry_is_an_orphan():
    t = R.Tables("nat")
    r = R.apply(t, [touch(7, 70, 3)])
    assert r["orphans"] == 1 and entry(t) is None
    r = R.apply(t, [touch(7, 70, 3), delete(10)])      # an incarnation the stream saw die
    assert r["orphans"] == 0 and entry(t) is None
    R.apply(t, [create(10)])
    r = R.apply(t, [touch(7, 70, 3, created=30)])      # a later incarnation we never saw created
    assert r["orphans"] == 1 and entry(t).pkts == 1


def test_whole_values_and_set_tables():
    t = R.Tables("nat")
    pk = L.NatPort(addr=PEER.daddr, port=PEER.dport, proto=17)
    owner2 = make_key("10.0.1.3", "10.0.2.2", 1, 2, "udp")
    R.apply(t, [S.Update(L.StTable.NAT_PORTS, L.StOp.SET, bytes(pk), 1, peer_words(A)),
                S.Update(L.StTable.NAT_PORTS, L.StOp.SET, bytes(pk), 1, peer_words(owner2))])
    assert bytes(t.data["nat_ports"][bytes(pk)]) == bytes(owner2)
    R.apply(t, [S.Update(L.StTable.NAT_PORTS, L.StOp.DEL, bytes(pk), 0, ())])
    assert not t.data["nat_ports"]
    ids = R.Tables("ids")
    hp = L.IdsHostPort(saddr=A.saddr, dport=A.dport, proto=17)
    R.apply(ids, [S.Update(L.StTable.IDS_HOSTPORTS, L.StOp.SET, bytes(hp), 1, (1,))])
    [(k, v)] = ids.data["ids_hostports"].items()
    assert k == bytes(hp) and v.value == 1
    with pytest.raises(BadInput):
        R.apply(ids, [create(1)])                  # a NAT statelet for an IDS snapshot


def test_snapshot_chunks_round_trip():
    t = R.Tables("nat")
    R.apply(t, [create(10), create(11, key=PEER)])
    chunks = t.chunks()
    assert {c.table: c.count for c in chunks} == {"nat_fwd": 2, "nat_rev": 0, "nat_ports": 0}
    again = R.Tables.from_chunks(chunks)
    assert {k: bytes(v) for k, v in again.data["nat_fwd"].items()} == {k: bytes(v) for k, v in t.data["nat_fwd"].items()}
    r = R.apply(chunks, [touch(2, 2, 12)])         # chunks in, Tables out
    assert entry(r["tables"]).pkts == 2


def test_sigma_from_counters():
    before = {"r_statelet": 10, "r_statelet_bytes": 480, "r_statelet_pkt_bytes": 660}
    after = {"r_statelet": 110, "r_statelet_bytes": 5280, "r_statelet_pkt_bytes": 7260, "r_statelet_ring_full": 2}
    s = R.sigma(after, before)
    assert (s["records"], s["statelet_bytes"], s["packet_bytes"], s["dropped"]) == (100, 4800, 6600, 2)
    assert s["sigma"] == pytest.approx(48 / 66) and s["ring_bytes"] == 4800 + 800
