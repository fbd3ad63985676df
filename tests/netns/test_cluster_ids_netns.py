"""IDS moves on the spread, sharing testbed (tests/netns/spread4.json with 4 IDS instances in 2
clusters), as `nfx bench cluster --nf ids` runs them (one-way traffic): an OP move inside a
cluster (opennf, the last batch) and one across (dist, the whole state) complete, lose,
duplicate and reorder nothing, and leave every moved flow's counters at what one instance that
saw all the traffic would hold, and every other instance's flows where they were.

What broke it (`nfx bench cluster --nf ids`: "timed out ... waiting for the source's IBC"): a
move there marks and steers its flows by key, and the IBC on the outside carries the reverse of
a moved flow's tuple. Without echo no flow had that tuple, so the source had no mark for it and
dropped the IBC as forged, and the controller never saw its cut on that side. With echo the
cut's inside tuple could be a return flow's, which enters at the other switch. A move there now
takes each IDS flow's both directions (movespec.spread_keys) and sends each side's IBC with the
tuple that side's host sends (Steering.from_host)."""
import json
import time
from pathlib import Path

from nfx.procs import controller
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import nfx, running_testbed, under_traffic

FLOWS = 400
NFS = [f"nf{i}" for i in range(4)]
TOPO = str(Path(__file__).with_name("spread4.json"))


def per_flow(name: str, inst: str) -> dict[tuple, int]:
    """The instance's generator flows by (src, sport, dst, dport): their packets."""
    return {(f["src"], f["sport"], f["dst"], f["dport"]): f["pkts"] for f in builder.instance(name, inst).flows()
            if f["dport"] == 9000}


def test_ids_moves_inside_and_across_a_cluster_on_a_spread_testbed():
    t0 = time.monotonic()
    with running_testbed(TOPO, "ids", hold_slots=1024) as rec, rig(rec["name"], FLOWS) as (gen, sink):
        name = rec["name"]
        r = measure(gen, sink, 20000, 0.2, 1.0)                   # every flow on its instance
        assert r["lost"] == 0, r
        up = nfx("cluster", "up", "--name", name, "--json", "--batch", "30")
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout)["clusters"] == {"c0": NFS[:2], "c1": NFS[2:]}
        for src, dst, mechanism, kind in (("nf0", "nf1", "opennf", "inside"), ("nf1", "nf2", "dist", "across")):
            before = {n: per_flow(name, n) for n in NFS}
            moved = set(before[src])
            assert moved
            m, r = under_traffic(name, gen, sink, 10000, 1.0, 0.4, lambda: controller.call(
                name, "POST", "/move", {"src": src, "dst": dst, "filter": "all", "guarantee": "op",
                                        "mechanism": mechanism, "scopes": "per-flow,multi-flow"}, timeout=60),
                what="move")
            assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0), (src, dst, m, r)
            assert m["cluster"]["kind"] == kind, m["cluster"]
            each = r["sent"] // FLOWS
            after = {n: per_flow(name, n) for n in NFS}
            # every moved flow at dst with what a single instance would hold; the
            # other instances' flows stayed where the spread sends them
            assert not after[src] and set(after[dst]) == moved | set(before[dst])
            for n in NFS:
                for k, pkts in after[n].items():
                    was = before[src][k] if k in moved else before[n][k]
                    assert pkts == was + each, (n, k, was, pkts)
        nfx("cluster", "down", "--name", name)
    print(f"IDS moves inside and across: {time.monotonic() - t0:.1f} s")
