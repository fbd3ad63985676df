"""`nfx bench queues`: the cluster slides' multithreading results (seeds/cluster-state-management-
slides.txt: "latency decreases as the number of threads increases", "throughput increases as
the number of threads increases") in XDP's terms: an NF instance whose veths have N queues,
each rx queue with its own NAPI, on the CPU whose frames fill it.

One chain testbed (h1 -> nf0 -> h2, netns/chain.json) per NF kind and queue count, every
data-plane veth with that many rx and tx queues. The generator sends from one pinned thread per
CPU (`senders`, by default every CPU this process may use), each thread its own block of the
flows, in every point: only the queue count changes (and, for reference, 1 queue is also fed by 1
sender: the most one queue takes when no other CPU pushes into its ring). Per point:
- throughput: the most the NF forwards, found by offering more than it can take (every sender
  flat out), counted at the sink (received / elapsed), with what was lost;
- latency: the sink's one-way p50/p99 at fixed offered rates below the maximum;
- where the work ran: the NF's verdicts per CPU (its per-CPU stats map) and the frames each rx
  queue of its inside veth took (ethtool -S).
With `napi` including "threaded", every point is run again with NAPI threads
(/sys/class/net/<dev>/threaded = 1 on the chain's four data-plane veths)."""
import os
import re
import secrets
import statistics
from contextlib import ExitStack, contextmanager

from .. import layout as L, registry
from ..loader import netns
from ..nfs import open_node
from ..testbed import builder, topology
from ..traffic.report import measure
from ..traffic.rig import rig

QUEUES = (1, 2, 4)
LAT_RATES = (10_000, 1_000_000)
NAPI = ("softirq", "threaded")
FLOWS = 256
DURATION = 2.0
REPS = 3
VERDICTS = (L.Stat.V_ABORTED, L.Stat.V_DROP, L.Stat.V_PASS, L.Stat.V_TX, L.Stat.V_REDIRECT)


def data_ifaces(rec) -> list[tuple[str, str]]:
    """(netns, device) of both ends of every data-plane link of the chain."""
    out = []
    for node in ("h1", "nf0", "h2"):
        info = rec["nodes"][node]
        out += [(info["ns"], dev) for dev in info["ifaces"].values()]
    return out


def set_threaded(rec, on: bool) -> None:
    # sysfs shows the netns of whoever mounted it: `ip netns exec` remounts it
    for ns, dev in data_ifaces(rec):
        netns.run(["sh", "-c", f"echo {int(on)} > /sys/class/net/{dev}/threaded"], ns=ns)


def rxq_packets(ns: str, dev: str) -> list[int]:
    """XDP frames each rx queue of a veth has taken (its per-queue ethtool counters)."""
    found = re.findall(r"rx_queue_(\d+)_xdp_packets:\s*(\d+)", netns.run(["ethtool", "-S", dev], ns=ns))
    by_q = {int(q): int(n) for q, n in found}
    return [by_q[q] for q in sorted(by_q)]


def per_cpu_done(nf) -> list[int]:
    """Packets the NF program finished (any verdict) on each CPU so far."""
    rows = [list(nf.maps.nfx_stats.get(L.u32(v))) for v in VERDICTS]
    return [sum(col) for col in zip(*rows)]


@contextmanager
def _testbed(nf: str, queues: int, progress):
    name = "bq" + secrets.token_hex(2)
    progress(f"testbed {name}: chain, {nf}, {queues} queue(s) a veth")
    builder.up(name, topology.load("chain", queues=queues), nf, max_flows=65536, agents=False)
    try:
        yield registry.load(name)
    finally:
        builder.down(name)


def _point(rec, gen, sink, nf, rate, duration: float) -> dict:
    ns, dev = rec["nodes"]["nf0"]["ns"], rec["nodes"]["nf0"]["ifaces"]["h1"]
    c0, q0 = per_cpu_done(nf), rxq_packets(ns, dev)
    r = measure(gen, sink, rate, duration)
    cpu = [b - a for a, b in zip(c0, per_cpu_done(nf))]
    rxq = [b - a for a, b in zip(q0, rxq_packets(ns, dev))]
    el = max(r["elapsed_s"], 1e-9)
    return {"offered_pps": rate, "sent": r["sent"], "sent_pps": round(r["sent"] / el),
            "received": r["received"], "throughput_pps": round(r["received"] / el), "lost": r["lost"],
            "reordered": r["reordered"], "duplicated": r["duplicated"], "clean": r["clean"],
            "lat_p50_us": r["lat_p50_us"], "lat_p99_us": r["lat_p99_us"], "lat_max_us": r["lat_max_us"],
            "nf_per_cpu": cpu, "nf_rx_queues": rxq}


def run(nfs=("nat", "ids"), queues=QUEUES, lat_rates=LAT_RATES, napi=NAPI, flows: int = FLOWS,
        duration: float = DURATION, reps: int = REPS, senders: int | None = None, progress=lambda m: None) -> dict:
    """Every queue count's testbed is up at once and each point's runs go round them in turn
    (rep 1 of q=1, 2, 4, then rep 2, ...): the CPUs are shared, and a slow second then costs
    every queue count alike instead of one."""
    senders = senders or len(os.sched_getaffinity(0))
    out = {"nfs": list(nfs), "queues": list(queues), "lat_rates": list(lat_rates), "napi": list(napi),
           "flows": flows, "duration_s": duration, "reps": reps, "senders": senders,
           "cpus": len(os.sched_getaffinity(0)), "rows": []}
    # (queues, senders) of each testbed; with several senders, 1 queue also with 1 sender: the
    # most one queue takes when nothing else pushes into its ring (a single-threaded NF)
    setups = [(q, senders) for q in queues] + [(1, 1)] * (1 in queues and senders > 1)
    for kind in nfs:
        with ExitStack() as stack:
            beds = {}
            for q, k in setups:
                rec = stack.enter_context(_testbed(kind, q, progress))
                gen, sink = stack.enter_context(rig(rec["name"], flows, cpus=k))
                beds[(q, k)] = (rec, gen, sink, open_node(rec.nf("nf0")))
                measure(gen, sink, 20_000, 0.3)                 # every flow's state in place
            for mode in napi:
                for rec, *_ in beds.values():
                    set_threaded(rec, mode == "threaded")
                for rate in (None, *lat_rates):
                    what = "flat out" if rate is None else f"{rate:,} pps"
                    runs: dict[tuple, list] = {b: [] for b in beds}
                    for i in range(reps):
                        progress(f"{kind}, {mode} NAPI, {what}: run {i + 1}/{reps} of (queues, senders) {setups}")
                        for b, (rec, gen, sink, nf) in beds.items():
                            runs[b].append(_point(rec, gen, sink, nf, rate, duration))
                    for (q, k), rs in runs.items():
                        out["rows"].append({"nf": kind, "queues": q, "senders": k, "napi": mode,
                                            "sweep": "throughput" if rate is None else "latency",
                                            **summary(rs), "runs": rs})
    return out


def summary(runs: list[dict]) -> dict:
    """The medians of a point's runs (latency medians over the runs that had samples)."""
    def med(key):
        xs = [r[key] for r in runs if r[key] is not None]
        return statistics.median(xs) if xs else None
    ncpu = len(runs[0]["nf_per_cpu"])
    return {"offered_pps": runs[0]["offered_pps"], "sent_pps": round(med("sent_pps")),
            "throughput_pps": round(med("throughput_pps")), "lost": round(med("lost")),
            "lat_p50_us": med("lat_p50_us"), "lat_p99_us": med("lat_p99_us"),
            "nf_cpu_share": [round(sum(r["nf_per_cpu"][c] for r in runs) /
                                   max(1, sum(sum(r["nf_per_cpu"]) for r in runs)), 3) for c in range(ncpu)],
            "nf_rx_queues": [sum(r["nf_rx_queues"][i] for r in runs) for i in range(len(runs[0]["nf_rx_queues"]))]}
