"""A testbed's global state on a real etcd (LocalEtcd on free ports): membership that a lost lease
ends, NAT pool claims racing from threads that never overlap, counters merged over instances, and
strong_add from threads that loses no increment."""
import threading
import time

import pytest

from nfx import errors as E
from nfx.etcd.globalstate import GlobalState
from nfx.etcd import Etcd

from .etcd_fixture import etcd, local_etcd  # noqa: F401  (fixtures)


def test_membership_join_leave_and_lease_expiry(etcd):
    gs = GlobalState(etcd, "tb1")
    try:
        gs.join("c0", "nf0", ttl_s=1, mgmt="10.9.0.2:7000")
        gs.join("c0", "nf1", ttl_s=1)
        ka = gs.join("c1", "nf2", ttl_s=1)
        assert gs.members() == {"c0": ["nf0", "nf1"], "c1": ["nf2"]}
        assert gs.members("c1") == {"c1": ["nf2"]}
        rec = gs.member_records()["c0"]["nf0"]
        assert rec["mgmt"] == "10.9.0.2:7000" and rec["cluster"] == "c0" and rec["instance"] == "nf0"
        assert set(etcd.range("/nfx/tb1/members/")) == {"/nfx/tb1/members/c0/nf0", "/nfx/tb1/members/c0/nf1",
                                                        "/nfx/tb1/members/c1/nf2"}
        time.sleep(2.2)                          # kept alive past twice the TTL
        assert gs.members() == {"c0": ["nf0", "nf1"], "c1": ["nf2"]}
        # nf2's process "dies": nobody refreshes its lease any more and it drops out on its own
        ka.stop(revoke=False)
        t0 = time.monotonic()
        while "c1" in gs.members() and time.monotonic() - t0 < 5:
            time.sleep(0.1)
        assert gs.members() == {"c0": ["nf0", "nf1"]}
        assert 0.5 < time.monotonic() - t0 < 3
        assert gs.leave(instance="nf1") == 1
        assert gs.members() == {"c0": ["nf0"]}
        gs.join("c1", "nf0", ttl_s=1)                # joining again moves it
        assert gs.members() == {"c1": ["nf0"]}
    finally:
        gs.close()
    assert gs.members() == {}                        # close() revoked the leases


def test_testbeds_do_not_see_each_other(etcd):
    a, b = GlobalState(etcd, "tba"), GlobalState(etcd, "tbab")
    try:
        a.join("c", "nf0", ttl_s=2)
        a.claim_ports("nf0", 1000, 1999)
        a.publish_counters("nf0", "ids_global", {"pkts": 5})
        assert b.members() == {} and b.owners() == {} and b.merged_counters("ids_global") == {}
        assert a.wipe() >= 2 and a.members() == {} and a.owners() == {}
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x" * 65, "sp ace"])
def test_names_are_checked(etcd, bad):
    with pytest.raises(E.BadInput):
        GlobalState(etcd, bad)
    gs = GlobalState(etcd, "tb")
    for call in (lambda: gs.join(bad, "nf0"), lambda: gs.claim_ports(bad, 1, 2),
                 lambda: gs.publish_counters("nf0", bad, {})):
        with pytest.raises(E.BadInput):
            call()


def test_pool_claims_and_release(etcd):
    gs = GlobalState(etcd, "tb")
    assert gs.owners() == {}
    assert gs.claim_ports("nf0", 10000, 19999) == {"nf0": (10000, 19999)}
    gs.claim_ports("nf1", 20000, 29999)
    with pytest.raises(E.AlreadyExists, match="overlap 20000-29999 owned by nf1"):
        gs.claim_ports("nf2", 25000, 30000)
    with pytest.raises(E.AlreadyExists, match="overlap"):
        gs.claim_ports("nf2", 15000, 20000)             # both
    assert gs.claim_ports("nf0", 10000, 12000)["nf0"] == (10000, 12000)     # an owner may change its own range
    gs.claim_ports("nf2", 12001, 19999)
    assert gs.owners() == {"nf0": (10000, 12000), "nf1": (20000, 29999), "nf2": (12001, 19999)}
    assert gs.release_ports("nf1") == (20000, 29999)
    assert gs.release_ports("nf1") is None
    gs.claim_ports("nf3", 20000, 20000)
    assert gs.owners() == {"nf0": (10000, 12000), "nf2": (12001, 19999), "nf3": (20000, 20000)}
    for lo, hi in ((0, 5), (5, 4), (1, 65536)):
        with pytest.raises(E.BadInput):
            gs.claim_ports("nf4", lo, hi)


@pytest.mark.parametrize("round", range(3))
def test_racing_pool_claims_never_overlap(local_etcd, round):
    """8 threads, each with its own client, claim at once ranges that overlap their neighbours' (i's
    range overlaps i-1's and i+1's only). Whatever the interleaving: no two neighbours both win, and
    every loser lost to a neighbour that won (nobody releases), and the pool holds exactly the winners."""
    n = 8
    won, lost, errors = {}, [], []
    start = threading.Barrier(n)

    def rng(i):
        return 1000 + i * 500, 1000 + i * 500 + 999

    def claimer(i):
        gs = GlobalState(Etcd(local_etcd.url), "race")
        start.wait()
        try:
            gs.claim_ports(f"nf{i}", *rng(i))
            won[i] = rng(i)
        except E.AlreadyExists:
            lost.append(i)
        except Exception as e:                     # noqa: BLE001 (reported below)
            errors.append(e)
    ts = [threading.Thread(target=claimer, args=(i,)) for i in range(n)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert errors == [] and sorted(list(won) + lost) == list(range(n))
    owners = GlobalState(Etcd(local_etcd.url), "race").owners()
    assert owners == {f"nf{i}": r for i, r in won.items()}
    rs = sorted(owners.values())
    assert all(a[1] < b[0] for a, b in zip(rs, rs[1:])), f"overlapping ranges: {rs}"
    assert all(i - 1 in won or i + 1 in won for i in lost), f"won {sorted(won)}, lost {sorted(lost)}"


def test_counters_merge_over_instances(etcd):
    gs = GlobalState(etcd, "tb")
    gs.publish_counters("nf0", "ids_global", {"pkts": 10, "bytes": 1000, "alerts": 1})
    gs.publish_counters("nf1", "ids_global", {"pkts": 5, "bytes": 700})
    gs.publish_counters("nf1", "ids_sig_hits", {"7": 3})
    assert gs.merged_counters("ids_global") == {"alerts": 1, "bytes": 1700, "pkts": 15}
    gs.publish_counters("nf1", "ids_global", {"pkts": 6, "bytes": 800})      # a later publish replaces nf1's
    assert gs.merged_counters("ids_global") == {"alerts": 1, "bytes": 1800, "pkts": 16}
    assert gs.counters("ids_global")["nf1"] == {"pkts": 6, "bytes": 800}
    assert gs.merged_counters("ids_sig_hits") == {"7": 3}
    assert gs.forget_counters("nf1") == 2
    assert gs.merged_counters("ids_global") == {"alerts": 1, "bytes": 1000, "pkts": 10}
    assert gs.merged_counters("nope") == {}


def test_strong_add_from_threads_loses_no_increment(local_etcd):
    n_threads, n_adds = 6, 20
    seen = []

    def adder():
        gs = GlobalState(Etcd(local_etcd.url), "tb")
        for _ in range(n_adds):
            seen.append(gs.strong_add("flows", 1))
    ts = [threading.Thread(target=adder) for _ in range(n_threads)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    gs = GlobalState(Etcd(local_etcd.url), "tb")
    assert gs.strong_get("flows") == n_threads * n_adds
    # every add saw a distinct value: they were applied one after another, none twice
    assert sorted(seen) == list(range(1, n_threads * n_adds + 1))
    assert gs.strong_add("flows", -20) == n_threads * n_adds - 20
    assert gs.dump()["strong"] == {"flows": 100}


def test_global_state_on_a_dead_etcd_says_so(local_etcd):
    gs = GlobalState(local_etcd.client(timeout=2), "tb")
    local_etcd.stop()
    for call in (gs.members, lambda: gs.claim_ports("nf0", 1, 2), lambda: gs.strong_add("x", 1),
                 lambda: gs.publish_counters("nf0", "t", {"a": 1})):
        with pytest.raises(E.EtcdDown, match=local_etcd.url):
            call()


def test_watch_members_sees_joins_leaves_and_expiries(etcd):
    gs = GlobalState(etcd, "tbw")
    seen, four = [], threading.Event()

    def cb(ev, c, i):
        seen.append((ev, c, i))
        if len(seen) == 4:
            four.set()
    w = gs.watch_members(cb)
    try:
        gs.join("c0", "nf0", ttl_s=1)
        ka = gs.join("c0", "nf1", ttl_s=1)
        gs.leave(instance="nf0")
        ka.stop()                                    # nf1 "dies": its lease expires
        assert four.wait(5)
    finally:
        w.stop()
        gs.close()
    assert seen == [("PUT", "c0", "nf0"), ("PUT", "c0", "nf1"), ("DELETE", "c0", "nf0"), ("DELETE", "c0", "nf1")]


def test_an_etcd_outage_is_reported_and_membership_survives_a_short_one(local_etcd):
    """etcd killed mid-run: every call says EtcdDown with the URL, the keepalive records the error
    and keeps trying; etcd back on the same ports with its data: the member is still there (a new
    leader renews leases) and the keepalive recovers."""
    gs = GlobalState(local_etcd.client(timeout=1), "tbo")
    lost = []
    try:
        ka = gs.join("c0", "nf0", ttl_s=2, on_lost=lost.append)
        gs.claim_ports("nf0", 100, 200)
        local_etcd.kill()
        with pytest.raises(E.EtcdDown, match=local_etcd.url):
            gs.members()
        t0 = time.monotonic()
        while ka.error is None and time.monotonic() - t0 < 3:
            time.sleep(0.05)
        assert isinstance(ka.error, E.EtcdDown) and local_etcd.url in ka.error.hint
        local_etcd.restart()
        assert gs.members() == {"c0": ["nf0"]} and gs.owners() == {"nf0": (100, 200)}
        t0 = time.monotonic()
        while ka.error is not None and time.monotonic() - t0 < 3:
            time.sleep(0.05)
        assert ka.error is None and ka.alive and not lost
        time.sleep(2.5)                              # past the TTL: still kept alive
        assert gs.members() == {"c0": ["nf0"]}
    finally:
        gs.close()
