"""Clusters (issue 13) on a real testbed: four NAT instances in two clusters (nf0,nf1 / nf2,nf3),
`nfx cluster up` with a local etcd, the stamper and batched sharing (S_batch 30), traffic judged
by the sink. An OP move inside a cluster carries at most one batch per flow (what changed since
the flow's last batch); an OP move across clusters carries the whole state; both lose, duplicate
and reorder nothing, and leave every connection's counters at what a single instance would hold.
`nfx cluster down` (and `testbed down`) leave no etcd behind."""
import ipaddress
import json
import os

import pytest

from nfx import registry
from nfx.procs import controller
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import nfx, running_testbed, under_traffic

FLOWS, PER_ADDR, BASE = 1000, 125, "10.0.1.16"
RATE, DURATION, AT = 40000, 1.5, 0.6
BATCH = 30


def etcd_alive(info) -> bool:
    return info is not None and os.path.exists(f"/proc/{info['pid']}")


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=4) as rec:
        name = rec["name"]
        r = nfx("cluster", "up", "--name", name, "--clusters", "nf0,nf1/nf2,nf3", "--batch", str(BATCH), "--json")
        assert r.returncode == 0, r.stderr
        up = json.loads(r.stdout)
        info = registry.load(name)["cluster"]["local_etcd"]
        try:
            with rig(name, FLOWS, src_ip=BASE, flows_per_addr=PER_ADDR) as (gen, sink):
                warm = measure(gen, sink, 20000, 0.5, 1.0)
                assert warm["lost"] == 0
                yield {"name": name, "gen": gen, "sink": sink, "seen": [warm["sent"] // FLOWS], "up": up,
                       "etcd": info}
        finally:
            if registry.load(name).get("cluster"):
                nfx("cluster", "down", "--name", name)
        assert not etcd_alive(info), "cluster down left its etcd running"


def per_flow(name: str, inst: str) -> dict[int, int]:
    base = int(ipaddress.IPv4Address(BASE))
    return {(int(ipaddress.IPv4Address(m["src"])) - base) * PER_ADDR + m["sport"] - 1024: m["pkts_out"]
            for m in builder.instance(name, inst).mappings() if m["dport"] == 9000}


def move(tb, src, dst, mechanism):
    name = tb["name"]
    m, r = under_traffic(name, tb["gen"], tb["sink"], RATE, DURATION, AT, lambda: controller.call(
        name, "POST", "/move", {"src": src, "dst": dst, "filter": "all", "guarantee": "op", "mechanism": mechanism,
                                "scopes": "per-flow,multi-flow"}),
        judged=lambda r, m: not (r["lost"] or r["duplicated"] or r["reordered"] or r["unexpected"]), what="move")
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0), r
    assert r["bad_payload"] == 0 if "bad_payload" in r else True
    tb["seen"].append(r["sent"] // FLOWS)
    # every connection's counters are what one instance that saw all the traffic would hold
    assert per_flow(name, dst) == {i: sum(tb["seen"]) for i in range(FLOWS)}
    assert per_flow(name, src) == {}
    return m


def test_cluster_up_status(tb):
    up = tb["up"]
    assert up["clusters"] == {"c0": ["nf0", "nf1"], "c1": ["nf2", "nf3"]} and up["local_etcd"] and up["stamp"]
    # each NAT instance owns its own slice of the public ports, claimed in etcd
    pool = sorted(tuple(v) for v in up["nat_pool"].values())
    assert len(pool) == 4 and all(a[1] < b[0] for a, b in zip(pool, pool[1:]))
    r = nfx("cluster", "status", "--name", tb["name"], "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["etcd_members"] == {"c0": ["nf0", "nf1"], "c1": ["nf2", "nf3"]}
    nf0, nf1 = s["instances"]["nf0"], s["instances"]["nf1"]
    # the warm-up ran on nf0: its batches reached nf1 (its cluster), not nf2 or nf3
    assert nf0["sharing"]["batches"] > 0 and nf0["sharing"]["unstamped"] == 0 and not nf0["sharing"]["errors"]
    assert nf1["replicas"]["per_flow"] == 2 * FLOWS and nf1["replicas"]["orphans"] == 0
    assert s["instances"]["nf2"]["replicas"]["per_flow"] == 0


@pytest.mark.parametrize("mechanism", ["opennf", "dist"])
def test_inside_carries_one_batch_across_the_whole_state(tb, mechanism):
    inside = move(tb, "nf0", "nf1", mechanism)
    across = move(tb, "nf1", "nf2", mechanism)
    ci, ca = inside["cluster"], across["cluster"]
    assert ci["kind"] == "inside" and ca["kind"] == "across", (ci, ca)
    # inside: at most one batch per flow (one direction each here: no echo), nothing else
    assert 0 < ci["batches"] <= FLOWS and ci["batch_flows"] <= FLOWS
    assert ci["batch_statelets"] <= ci["batches"] * 3            # nat_fwd, nat_rev, nat_ports at most
    assert ci["replica_entries"] == 3 * FLOWS
    # across: the whole state, every entry
    assert ca["entries"] >= 3 * FLOWS
    assert inside["state_bytes"] < across["state_bytes"], (inside["state_bytes"], across["state_bytes"])
    # back to nf0 for the next run (across: nf2 is in the other cluster)
    move(tb, "nf2", "nf0", mechanism)


def test_cluster_down_then_testbed_down_leave_nothing(tb):
    name = tb["name"]
    r = nfx("cluster", "down", "--name", name, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["local_etcd_stopped"] and not etcd_alive(tb["etcd"])
    assert all(m.get("stopped") for m in d["members"].values())
    r = nfx("cluster", "down", "--name", name)
    assert r.returncode == 2 and "no clusters up" in r.stderr
