"""The cluster slides' testbed's shape at the size of a test (tests/netns/spread4.json: 4 NAT
instances in 2 clusters of 2 between two switches that spread flows over them; netns/cluster.json's
12 in 3 clusters of 4 run in `nfx bench cluster`). Traffic with its return path (the sink echoes every
packet) crosses it with nothing lost: the ingress switch spreads the flows by their hash, every
instance gets some, and the egress switch sends each public port's return traffic to the
instance whose share of the port range holds it (a wrong pick is a NAT with no mapping: lost
echoes). A move of one flow to an instance of another cluster still wins over the spread.

Then `nfx cluster up` (a local etcd, the NAT pool's owners, the stamper, batched sharing with
S_batch 30): an OP move of an instance's flows to a member of its cluster carries at most one
batch per flow, one to another cluster the whole state; both lose, duplicate and reorder
nothing, leave every moved connection's counters at what a single instance would hold, and
leave every other instance's flows alone. `nfx cluster down` leaves no etcd behind."""
import json
import os
import time
from pathlib import Path

import pytest

from nfx import registry
from nfx.control.switch import Switch
from nfx.procs import controller
from nfx.testbed import builder, topology
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import nfx, running_testbed, under_traffic

FLOWS = 1200
NFS = [f"nf{i}" for i in range(4)]
TOPO = str(Path(__file__).with_name("spread4.json"))


@pytest.fixture(scope="module")
def tb():
    t0 = time.monotonic()
    with running_testbed(TOPO, "nat", hold_slots=1024) as rec:
        print(f"testbed up ({len(NFS)} NAT instances): {time.monotonic() - t0:.1f} s")
        with rig(rec["name"], FLOWS, echo=True) as sides:
            yield rec, sides


def per_flow(name, inst) -> dict[int, dict]:
    return {m["sport"]: m for m in builder.instance(name, inst).mappings() if m["dport"] == 9000}


def spread_rule(sw: Switch) -> int:
    [rid] = [r.id for r in sw.rules() if r.rule.spread]
    return rid


def test_the_record_and_status_name_the_clusters(tb):
    rec, _ = tb
    assert rec["clusters"] == {"c0": NFS[0:2], "c1": NFS[2:4]} and rec["spread"]
    st = builder.status(rec["name"])
    assert st["clusters"] == rec["clusters"] and st["instances"] == len(NFS)
    assert all(st["nodes"][n]["agent"]["alive"] for n in NFS)


def test_flows_spread_over_every_instance_and_return_to_their_instance(tb):
    rec, (gen, sink, echo) = tb
    name = rec["name"]
    r = measure(gen, sink, 20000, 1.5, 1.0, echo=echo)
    assert (r["sent"], r["lost"], r["duplicated"], r["unexpected"]) == (30000, 0, 0, 0), r
    e = r["echo"]
    assert (e["reflected"], e["lost"], e["duplicated"], e["unexpected"]) == (30000, 0, 0, 0), e
    flows = {n: per_flow(name, n) for n in NFS}
    # every instance processed some flows, each flow on one instance only
    assert all(flows[n] for n in NFS), {n: len(f) for n, f in flows.items()}
    assert sum(len(f) for f in flows.values()) == len(set().union(*flows.values())) == FLOWS
    for n in NFS:
        st = builder.instance(name, n).stats()
        assert st.get("v_redirect", 0) >= 2 * sum(m["pkts_out"] for m in flows[n].values()) > 0, (n, st)
    # each instance's mappings use its own share of the public ports, and the echoes came back
    # through the instance that made them
    whole = builder.nf_config("nat", topology.load(TOPO))
    for i, n in enumerate(NFS):
        share = builder.instance_config(whole, i, len(NFS))
        for m in flows[n].values():
            assert share.port_lo <= int(m["public"].rsplit(":", 1)[1]) <= share.port_hi
            assert m["pkts_in"] == m["pkts_out"] > 0
    # both switches' spread rules sent some packets to every instance
    for sw in ("si", "so"):
        info = rec["nodes"][sw]
        s = Switch.open(sw, info["ns"], registry.pin_root(name) / sw)
        try:
            hits = s.spread_hits(spread_rule(s))
        finally:
            s.close()
        assert len(hits) == len(NFS) and min(hits) > 0 and sum(hits) == 30000, (sw, hits)


def test_a_move_of_one_flow_across_clusters_wins_over_the_spread(tb):
    rec, (gen, sink, echo) = tb
    name = rec["name"]
    flows = {n: per_flow(name, n) for n in NFS}
    src = next(n for n in NFS[:2] if flows[n])                  # a flow of cluster c0 ...
    sport = min(flows[src])
    dst = "nf3"                                                 # ... to an instance of c1
    m, r = under_traffic(name, gen, sink, 10000, 1.5, 0.6, lambda: controller.call(
        name, "POST", "/move", {"src": src, "dst": dst, "guarantee": "lf", "mechanism": "dist",
                                "filter": f"proto=udp sport={sport}"}, timeout=120), what="move", echo=echo)
    assert (r["lost"], r["duplicated"], r["unexpected"]) == (0, 0, 0), (m, r)
    assert (r["echo"]["lost"], r["echo"]["duplicated"]) == (0, 0), (m, r["echo"])
    assert sport in per_flow(name, dst) and sport not in per_flow(name, src)
    before = per_flow(name, dst)[sport]["pkts_in"]
    r = measure(gen, sink, 10000, 0.5, 1.0, echo=echo)          # afterwards, through the move's rules
    assert (r["lost"], r["echo"]["lost"]) == (0, 0), r
    assert per_flow(name, dst)[sport]["pkts_in"] > before
    assert sport not in per_flow(name, src)


def cluster_up(name: str, *args: str) -> dict:
    r = nfx("cluster", "up", "--name", name, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cluster_up_shares_in_batches_inside_each_cluster(tb):
    rec, (gen, sink, echo) = tb
    name = rec["name"]
    up = cluster_up(name, "--batch", "30,c1=20")         # S_batch per cluster
    assert up["clusters"] == rec["clusters"] and up["local_etcd"] and up["stamp"]
    assert up["batch"] == {"c0": 30, "c1": 20}
    pool = sorted(tuple(v) for v in up["nat_pool"].values())     # each instance's share, claimed in etcd
    assert len(pool) == len(NFS) and all(a[1] < b[0] for a, b in zip(pool, pool[1:]))
    # 40 packets a flow, stamped from 1 on (the stamper starts counting at cluster up): every flow
    # crosses its cluster's batch boundary (30 or 20) while the traffic runs, so each instance's
    # batches come from boundary records, not from the idle sweep (idle_ms after the last packet)
    r = measure(gen, sink, 24000, 2.0, 1.0)
    assert r["lost"] == 0 and r["bad_len"] == 0, r
    r = nfx("cluster", "status", "--name", name, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert {c: sorted(ms) for c, ms in st["etcd_members"].items()} == {c: sorted(ms) for c, ms in rec["clusters"].items()}
    for c, members in rec["clusters"].items():
        for m in members:
            i = st["instances"][m]
            sh = i["sharing"]
            assert sh["batches"] >= len(per_flow(name, m)) > 0 and sh["unstamped"] == 0 and not sh["errors"], (m, sh)
            assert i["sharing"]["batch"] == up["batch"][c]
            assert i["replicas"]["orphans"] == 0
            # a member holds replicas of its cluster's flows only: 2 per-flow entries a NAT connection
            others = sum(len(per_flow(name, o)) for o in members if o != m)
            assert i["replicas"]["per_flow"] == 2 * others, (m, i["replicas"], others)


@pytest.mark.parametrize("mechanism", ["opennf", "dist"])
def test_moves_inside_carry_one_batch_across_the_whole_state(tb, mechanism):
    """One c0 instance's flows to the other (inside), all of them to nf2 (c1) and back, then inside
    again: among them the second's own first flows, which it gave away (it kept their replicas)."""
    rec, (gen, sink, echo) = tb
    name = rec["name"]
    assert registry.load(name).get("sharing"), "cluster up first (the test above)"
    # from whichever of c0's two holds more flows (the run before may have left them all on one)
    a, b = sorted(NFS[:2], key=lambda n: -len(per_flow(name, n)))
    plan = [(a, b, "inside"), (b, "nf2", "across"), ("nf2", a, "across"), (a, b, "inside")]
    # opennf the whole round; dist (for the suite's time) across, back, then inside
    if mechanism == "dist":
        plan = [(a, "nf2", "across"), ("nf2", b, "across"), (b, a, "inside")]
    for src, dst, kind in plan:
        before = {n: per_flow(name, n) for n in NFS}
        moved = set(before[src])
        # 20k pps: the sink echoes, so 40k through the instances, each sharing both directions
        m, r = under_traffic(name, gen, sink, 20000, 1.5, 0.6, lambda: controller.call(
            name, "POST", "/move", {"src": src, "dst": dst, "filter": "all", "guarantee": "op",
                                    "mechanism": mechanism, "scopes": "per-flow,multi-flow"}), what="move",
            # a loss prints the path's drop counters and every instance's reasons: where it went
            judged=lambda r, a: (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0))
        assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"], r["bad_len"]) == (0, 0, 0, 0, 0), \
            (src, dst, m, r)
        c = m["cluster"]
        assert c["kind"] == kind, c
        each = r["sent"] // FLOWS
        after = {n: per_flow(name, n) for n in NFS}
        # the moved connections' counters are what one instance that saw all the traffic holds;
        # every other instance's flows stayed where the spread sends them
        assert not after[src] and set(after[dst]) == moved | set(before[dst])
        for n in NFS:
            for sp in after[n]:
                was = before[src][sp] if sp in moved else before[n][sp]
                assert after[n][sp]["pkts_out"] == was["pkts_out"] + each, (n, sp)
        if kind == "inside":
            # what changed since each flow's last batch: at most one batch per flow (the stamper's
            # flows are directions: the sink echoes, so a connection is two)
            assert c["batches"] <= 2 * len(moved) and c["batch_flows"] <= 2 * len(moved), c
            assert c["replica_entries"] == 3 * len(moved), c
        else:
            assert c["entries"] >= 3 * len(moved), c
            # the flows left src's cluster: no member there (src included) keeps a replica of
            # them; what a member holds are its cluster's flows (2 per-flow entries a connection)
            st = json.loads(nfx("cluster", "status", "--name", name, "--json").stdout)
            cl = next(ms for ms in rec["clusters"].values() if src in ms)
            held = sum(len(after[n]) for n in cl)
            for n in cl:
                assert st["instances"][n]["replicas"]["per_flow"] <= 2 * held, (n, st["instances"][n]["replicas"], held)
        # what crossed: the batches (inside), or every entry (across); `nfx bench cluster` sets
        # them side by side
        assert m["state_bytes"] > 0 and moved


def test_cluster_down_leaves_no_etcd(tb):
    rec, _ = tb
    name = rec["name"]
    info = registry.load(name)["cluster"]["local_etcd"]
    r = nfx("cluster", "down", "--name", name, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["local_etcd_stopped"] and not os.path.exists(f"/proc/{info['pid']}")
    assert all(m.get("stopped") for m in d["members"].values())
    r = nfx("cluster", "down", "--name", name)
    assert r.returncode == 2 and "no clusters up" in r.stderr
