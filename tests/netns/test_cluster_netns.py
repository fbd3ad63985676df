"""The cluster slides' testbed (netns/cluster.json): 12 NAT instances in 3 clusters of 4 between
two switches that spread flows over them. Traffic with its return path (the sink echoes every
packet) crosses it with nothing lost: the ingress switch spreads the flows by their hash, every
instance gets some, and the egress switch sends each public port's return traffic to the
instance whose share of the port range holds it (a wrong pick is a NAT with no mapping: lost
echoes). A move of one flow to an instance of another cluster still wins over the spread."""
import time

import pytest

from nfx import registry
from nfx.control.switch import Switch
from nfx.procs import controller
from nfx.testbed import builder, topology
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import running_testbed, under_traffic

FLOWS = 1200
NFS = [f"nf{i}" for i in range(12)]


@pytest.fixture(scope="module")
def tb():
    t0 = time.monotonic()
    with running_testbed("cluster", "nat") as rec:
        print(f"testbed up (12 NAT instances): {time.monotonic() - t0:.1f} s")
        with rig(rec["name"], FLOWS, echo=True) as sides:
            yield rec, sides


def per_flow(name, inst) -> dict[int, dict]:
    return {m["sport"]: m for m in builder.instance(name, inst).mappings() if m["dport"] == 9000}


def spread_rule(sw: Switch) -> int:
    [rid] = [r.id for r in sw.rules() if r.rule.spread]
    return rid


def test_the_record_and_status_name_the_clusters(tb):
    rec, _ = tb
    assert rec["clusters"] == {"c0": NFS[0:4], "c1": NFS[4:8], "c2": NFS[8:12]} and rec["spread"]
    st = builder.status(rec["name"])
    assert st["clusters"] == rec["clusters"] and st["instances"] == 12
    assert all(st["nodes"][n]["agent"]["alive"] for n in NFS)


def test_flows_spread_over_all_twelve_and_return_to_their_instance(tb):
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
    whole = builder.nf_config("nat", topology.load("cluster"))
    for i, n in enumerate(NFS):
        share = builder.instance_config(whole, i, 12)
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
        assert len(hits) == 12 and min(hits) > 0 and sum(hits) == 30000, (sw, hits)


def test_a_move_of_one_flow_across_clusters_wins_over_the_spread(tb):
    rec, (gen, sink, echo) = tb
    name = rec["name"]
    flows = {n: per_flow(name, n) for n in NFS}
    src = next(n for n in NFS[:4] if flows[n])                  # a flow of cluster c0 ...
    sport = min(flows[src])
    dst = "nf9"                                                 # ... to an instance of c2
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


def test_an_ids_sees_both_directions_of_exactly_its_flows():
    """IDS instances on the same testbed: the egress switch spreads the return traffic by the
    same symmetric hash, so each instance's flow table holds both directions of its flows and
    of no others."""
    with running_testbed("cluster", "ids", hold_slots=1024) as rec:
        name = rec["name"]
        with rig(name, FLOWS, echo=True) as (gen, sink, echo):
            r = measure(gen, sink, 20000, 1.0, 1.0, echo=echo)
        assert (r["lost"], r["echo"]["lost"], r["echo"]["reflected"]) == (0, 0, 20000), r
        seen: set[int] = set()
        for n in NFS:
            fl = builder.instance(name, n).flows()
            out = {f["sport"] for f in fl if f["dport"] == 9000}
            back = {f["dport"] for f in fl if f["sport"] == 9000}
            assert out and out == back, (n, len(out), len(back))
            assert not out & seen
            seen |= out
        assert len(seen) == FLOWS
