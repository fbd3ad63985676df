"""`nfx bench cluster`: the cluster slides' figures (seeds/cluster-state-management-slides.txt),
re-measured on XDP instances: 12 NF instances in 3 clusters of 4 (netns/cluster.json; the ingress
switch spreads the flows over them), against the same 12 as one cluster where each shares with
the 11 others ("not clustered": every NF sends its state to every other), and against no
sharing at all.

- throughput against S_batch: the highest offered rate through the 12 instances, each sharing
  its flows' deltas every S_batch packets; the sink's rate, and what the sharing cost (the
  agents' CPU seconds, batches and bytes sent to members). Not flat out: the generator shares
  the machine's CPUs with the instances and their agents, so flat out measures how the three
  split the CPUs, not what the instances carry;
- throughput against the offered packet rate, at the slides' S_batch (30);
- migration overhead: an instance's flows moved to a member of its own cluster (the last batch)
  and to an instance of another cluster (the whole state), under traffic: entries and bytes sent,
  and what the sharing sent to members meanwhile.
Every figure comes from the sink, the agents and the moves' own reports."""
import os
import secrets
import time
from contextlib import contextmanager

from .. import registry
from ..agent.client import AgentClient
from ..cluster import manage
from ..procs import controller
from ..testbed import builder, topology
from ..traffic.report import measure
from ..traffic.rig import rig

BATCHES = (5, 30, 100, 1000)
RATES = (50_000, 100_000, 200_000, 400_000)
FLOWS = 1200
DURATION = 2.0
MOVE_PPS = 50_000
SLIDES_BATCH = 30
TICKS = os.sysconf("SC_CLK_TCK")


def _layouts(rec) -> dict[str, str]:
    """clustered: the topology's 3 clusters; flat: one cluster of all 12 (each shares with 11)."""
    cl = rec["clusters"]
    every = [n for ms in cl.values() for n in ms]
    return {"clustered": "/".join(",".join(ms) for ms in cl.values()), "flat": ",".join(every)}


def _agent_cpu_s(rec) -> float:
    """User + system CPU seconds of every agent of the testbed so far."""
    total = 0
    for n, i in rec["nodes"].items():
        pid = (i.get("agent") or {}).get("pid")
        if i.get("role") != "nf" or not pid:
            continue
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total / TICKS


def _shared(rec) -> dict:
    """Batches and bytes every instance's sharer has sent so far, summed, and the members' orphans."""
    out = {"batches": 0, "bytes": 0, "bytes_to_members": 0, "errors": 0, "orphans": 0}
    for c, ms in rec["sharing"]["clusters"].items():
        for m in ms:
            with AgentClient(rec["name"], m, timeout=10) as a:
                s = a.request("share_status")
            sh = s.get("sharing") or {}
            out["batches"] += sh.get("batches", 0)
            out["bytes"] += sh.get("bytes", 0)
            out["bytes_to_members"] += sh.get("bytes", 0) * len(sh.get("members") or ())
            out["errors"] += len(sh.get("errors") or {})
            out["orphans"] += (s.get("replicas") or {}).get("orphans", 0)
    return out


def _point(rec, gen, sink, rate, duration: float, sharing: bool) -> dict:
    cpu0 = _agent_cpu_s(rec)
    s0 = _shared(rec) if sharing else None
    r = measure(gen, sink, rate, duration)
    cpu = _agent_cpu_s(rec) - cpu0
    row = {"offered_pps": rate, "sent": r["sent"], "received": r["received"], "lost": r["lost"],
           "elapsed_s": round(r.get("elapsed_s", duration), 3),
           "reordered": r["reordered"], "duplicated": r["duplicated"],
           "throughput_pps": round(r["received"] / max(r.get("elapsed_s", duration), duration)),
           "sent_pps": round(r.get("pps") or 0),
           "agents_cpu_s": round(cpu, 3)}
    if sharing:
        s1 = _shared(rec)
        row.update({k: s1[k] - s0[k] for k in ("batches", "bytes", "bytes_to_members")},
                   share_errors=s1["errors"], replica_orphans=s1["orphans"])
    return row


@contextmanager
def _cluster(name: str, layout: str, batch: int):
    manage.up(name, layout, batch)
    rec = registry.load(name)
    try:
        yield rec
    finally:
        manage.down(name)


@contextmanager
def _testbed(nf: str, progress):
    name = "bc" + secrets.token_hex(3)
    progress(f"testbed {name}: netns/cluster.json, 12 {nf.upper()} instances in 3 clusters")
    builder.up(name, topology.load("cluster"), nf, 65536, progress=lambda m: progress(f"  {m}"), hold_slots=256)
    try:
        yield name
    finally:
        if registry.path(name).exists():
            progress(f"testbed {name} down")
            builder.down(name)


def _move(name: str, src: str, dst: str) -> dict:
    return controller.call(name, "POST", "/move", {"src": src, "dst": dst, "filter": "all", "guarantee": "op",
                                                   "mechanism": "opennf", "scopes": "per-flow,multi-flow"})


def run(nf: str = "nat", batches=BATCHES, rates=RATES, flows: int = FLOWS, duration: float = DURATION,
        progress=lambda m: None) -> dict:
    out = {"nf": nf, "flows": flows, "duration_s": duration, "batches": list(batches), "rates": list(rates),
           "slides_batch": SLIDES_BATCH, "rows": [], "moves": []}
    with _testbed(nf, progress) as name:
        rec = registry.load(name)
        layouts = _layouts(rec)
        with rig(name, flows) as (gen, sink):
            measure(gen, sink, 20_000, max(0.2, flows / 20_000 * 2), 1.0)     # every flow's state in place
            top = max(rates)
            progress("no sharing")
            for rate in rates:
                out["rows"].append({"layout": "none", "batch": None, "sweep": "rate",
                                    **_point(rec, gen, sink, rate, duration, False)})
            for layout, text in layouts.items():
                for batch in batches:
                    progress(f"{layout}, S_batch {batch}: {top:,} pps")
                    with _cluster(name, text, batch) as crec:
                        out["rows"].append({"layout": layout, "batch": batch, "sweep": "batch",
                                            **_point(crec, gen, sink, top, duration, True)})
                        if batch != SLIDES_BATCH:
                            continue
                        for rate in rates:
                            progress(f"{layout}, S_batch {batch}: {rate:,} pps")
                            out["rows"].append({"layout": layout, "batch": batch, "sweep": "rate",
                                                **_point(crec, gen, sink, rate, duration, True)})
                        if layout == "clustered":
                            out["moves"] += _overhead(name, crec, gen, sink, progress)
    return out


def _overhead(name: str, rec, gen, sink, progress) -> list[dict]:
    """One instance's flows to a member of its cluster, another's to another cluster, under traffic."""
    from ..traffic.report import measure as _measure
    import threading
    cl = list(rec["sharing"]["clusters"].values())
    plan = [("inside", cl[0][0], cl[0][1]), ("across", cl[0][2], cl[1][0])]
    rows = []
    for kind, src, dst in plan:
        progress(f"move {kind}: {src} → {dst} at {MOVE_PPS:,} pps")
        res: dict = {}
        t = threading.Thread(target=lambda: res.setdefault("r", _measure(gen, sink, MOVE_PPS, 1.5, 1.0)))
        t.start()
        time.sleep(0.6)
        try:
            m = _move(name, src, dst)
        finally:
            t.join()
        r = res["r"]
        c = m.get("cluster") or {}
        rows.append({"kind": kind, "src": src, "dst": dst, "flows": m.get("flows"), "state_bytes": m.get("state_bytes"),
                     "entries": c.get("entries") if kind == "across" else c.get("batch_statelets"),
                     "batches": c.get("batches"), "move_time_s": m.get("move_time_s"), "cluster": c,
                     "lost": r["lost"], "reordered": r["reordered"], "duplicated": r["duplicated"]})
    return rows
