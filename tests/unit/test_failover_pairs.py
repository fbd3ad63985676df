"""Failover's pieces that need no testbed (issue 14): the pairs as `nfx cluster up` and the
topology give them, the heartbeat datagram, the controller's /failover body, and the pair record
in a real etcd, where two detectors race and one wins."""
import threading

import pytest

from nfx.agent.heartbeat import beat, parse_beat
from nfx.cluster.pairs import parse_pairs, parse_spares
from nfx.control.failover import parse_body
from nfx.errors import BadInput
from nfx.etcd.globalstate import GlobalState
from nfx.testbed.topology import check_pairs

from .etcd_fixture import etcd, local_etcd  # noqa: F401  (fixtures)

NFS = ["nf0", "nf1", "nf2", "nf3"]
CL = {"c0": ["nf0", "nf1"], "c1": ["nf2", "nf3"]}


def test_pairs_parse_and_check():
    assert parse_pairs("nf0=nf1, nf2=nf3") == {"nf0": "nf1", "nf2": "nf3"}
    assert parse_spares("nf2, ,nf3") == ["nf2", "nf3"]
    check_pairs({"nf0": "nf1"}, ["nf2"], CL, NFS)
    for text in ("nf0", "nf0=", "=nf1", ""):
        with pytest.raises(BadInput):
            parse_pairs(text)
    bad = [({"nf0": "nf2"}, [], "not in one cluster"), ({"nf0": "nf0"}, [], "own secondary"),
           ({"nf0": "nf9"}, [], "no NF instance"), ({"nf0": "nf1", "nf1": "nf0"}, [], "two pairs"),
           ({"nf0": "nf1"}, ["nf1"], "is in a pair"), ({"nf0": "nf1"}, ["h1"], "no NF instance")]
    for pairs, spares, msg in bad:
        with pytest.raises(BadInput, match=msg):
            check_pairs(pairs, spares, CL, NFS)


def test_a_beat_carries_its_instance_and_nothing_else_parses():
    assert parse_beat(beat(7, "nf3")) == (7, "nf3")
    assert parse_beat(beat(2**32 + 5, "nf0")) == (5, "nf0")
    for junk in (b"", b"nfhb", b"nfhb\x00\x00\x00\x01", b"xxxx\x00\x00\x00\x01nf0", b"nfhb\x00\x00\x00\x01\xff\xfe"):
        assert parse_beat(junk) is None


def test_the_failover_body_is_checked():
    ok = {"etcd": "http://10.0.0.1:2379", "pairs": {"nf0": ["nf0", "nf1"]}}
    got = parse_body(ok)
    assert got["heartbeat_ms"] == 10 and got["misses"] == 3 and got["ttl_s"] == 2 and got["spares"] == []
    assert got["send_ms"] == 0.0          # a pair's batches go out as soon as they are read
    for change, msg in (({"pairs": {}}, "pairs"), ({"pairs": {"nf0": ["nf0"]}}, "pairs"),
                        ({"spares": "nf2"}, "spares"), ({"heartbeat_ms": 0}, "heartbeat_ms"),
                        ({"misses": True}, "misses"), ({"ttl_s": 0.5}, "ttl_s"), ({"etcd": None}, "etcd"),
                        ({"send_ms": -1}, "send_ms"), ({"send_ms": "0"}, "send_ms")):
        with pytest.raises(BadInput, match=msg):
            parse_body({**ok, **change})


def test_one_detector_wins_the_pair_record(etcd):
    gs = GlobalState(etcd, "tbp")
    gs.set_pair("nf0", "nf0", "nf1")
    known = gs.pair("nf0")
    wins = []

    def detector():
        wins.append(gs.take_over("nf0", "nf0", known=known))
    ts = [threading.Thread(target=detector) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    won = [w for w in wins if w is not None]
    assert won == [{"primary": "nf1", "secondary": None, "epoch": 2}]
    # nf0 is no primary any more: failing it over again changes nothing, with or without `known`
    assert gs.take_over("nf0", "nf0") is None and gs.take_over("nf0", "nf0", known=known) is None
    assert gs.set_secondary("nf0", "nf0", "nf2") is None          # not nf0's to name
    assert gs.set_secondary("nf0", "nf1", "nf2")["secondary"] == "nf2"
    # a planned failback: only to the secondary, which then serves, the primary standing by
    assert not gs.swap_primary("nf0", "nf1", "nf3")
    assert gs.swap_primary("nf0", "nf1", "nf2")
    assert gs.pairs() == {"nf0": {"primary": "nf2", "secondary": "nf1", "epoch": 4}}
    assert gs.dump()["pairs"] == gs.pairs()
