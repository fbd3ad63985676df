"""nfx bench dataplane: packets per second through nf0 of a chain testbed (h1 -> nf0 -> h2) on
every path it can take (dataplane_paths.py): the bare XDP forward (the floor: what moving a
packet through XDP costs with no NF), the XDP NAT, the XDP IDS, the kernel's own NAT (nftables
masquerade + conntrack) and plain kernel forwarding. Same veths, generator and sink, one run.
Each XDP NF is reported as a ratio to the bare forward (what its logic costs) and to nftables
(what it gains over the kernel).

The traffic goes flat out and the path pushes back, so the received rate is the whole
path's cost per packet. By default it goes round a loop (nfx.traffic.loop): the sink sends
every packet back to the generator, which makes it the next packet, so every frame is XDP-born
and no packet costs an skb to make, on any kernel. `traffic="send"` has the generator send each
packet by the kernel's test-run transport instead (live frames, or an skb where live frames are
refused: about 1 us a packet on the sending CPU, most of a fast path's time). With pin_cpu the
loop's seeds, or the one sending thread, and with them all the path's softirq work, run on that
CPU alone. The reps go round the paths in turn (rep 1 of every path, then
rep 2, ...): the CPUs are shared, and a slow second then costs every path alike. One block of
results per frame size."""
import os
import secrets
import statistics

from .. import registry
from ..errors import BadInput
from ..testbed import builder, topology
from ..traffic.gen import min_size
from ..traffic.report import measure
from ..traffic.rig import rig
from . import host
from .dataplane_paths import PATHS, NfPaths

MIN_ETH_FRAME = 60          # the smallest Ethernet frame without its FCS (64 B on the wire)
MAX_CHAIN_FRAME = 1514      # the chain's veths: MTU 1500 + the Ethernet header

# ratio key -> (numerator path, denominator path); ratio_xdp_* are the XDP NAT's (the names
# the bench had before it measured other NFs)
RATIOS = {
    "ratio_nat_over_xdp_forward": ("xdp_nat", "xdp_forward"),
    "ratio_ids_over_xdp_forward": ("xdp_ids", "xdp_forward"),
    "ratio_xdp_over_nft": ("xdp_nat", "nft_masquerade"),
    "ratio_ids_over_nft": ("xdp_ids", "nft_masquerade"),
    "ratio_xdp_forward_over_nft": ("xdp_forward", "nft_masquerade"),
    "ratio_xdp_over_kernel_forward": ("xdp_nat", "kernel_forward"),
}


def frame_sizes(requested: list[int] | None) -> list[dict]:
    """What each requested frame size is measured as: {"requested_bytes", "frame_bytes"}. None
    or []: the generator's smallest UDP frame (headers + its 24 B sequence payload, 66 B). A
    size from Ethernet's smallest frame up to that is measured at that (reported as such);
    below Ethernet's smallest, above what the chain carries, or two sizes measured alike: refused."""
    smallest = min_size("udp")
    if not requested:
        return [{"requested_bytes": None, "frame_bytes": smallest}]
    plan, seen = [], {}
    for r in requested:
        if not MIN_ETH_FRAME <= r <= MAX_CHAIN_FRAME:
            raise BadInput(f"frame size {r} B is outside {MIN_ETH_FRAME}..{MAX_CHAIN_FRAME}",
                           hint=f"Ethernet frames without the FCS are {MIN_ETH_FRAME} B at least; the chain's "
                                f"veths carry {MAX_CHAIN_FRAME} B at most (MTU 1500)")
        frame = max(r, smallest)
        if frame in seen:
            raise BadInput(f"frame sizes {seen[frame]} and {r} would both be measured as {frame} B frames",
                           hint=f"the generator's smallest UDP frame is {smallest} B")
        seen[frame] = r
        plan.append({"requested_bytes": r, "frame_bytes": frame})
    return plan


TRAFFIC = ("loop", "send")


def check_args(flows: int, duration: float, reps: int, pin_cpu: int | None, traffic: str = "loop") -> None:
    if traffic not in TRAFFIC:
        raise BadInput(f"traffic is {' or '.join(TRAFFIC)}, not {traffic!r}")
    if flows < 1 or reps < 1 or not duration > 0:
        raise BadInput(f"--flows and --reps must be at least 1 and --duration above 0 "
                       f"(got {flows}, {reps}, {duration:g})")
    usable = sorted(os.sched_getaffinity(0))
    if pin_cpu is not None and pin_cpu not in usable:
        raise BadInput(f"CPU {pin_cpu} is not one this process may use", hint=f"usable CPUs: {usable}")


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den; None when either is missing or den is 0 (a path that moved nothing)."""
    if num is None or not den:
        return None
    return num / den


def ratios(pps: dict[str, float]) -> dict[str, float | None]:
    """Every RATIOS key from one rate per path."""
    return {key: ratio(pps.get(a), pps.get(b)) for key, (a, b) in RATIOS.items()}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """One frame size's block from its runs (path -> measure() results, plus "redirected")."""
    results = {}
    for path, rs in runs.items():
        rx_pps = [r["received"] / r["elapsed_s"] for r in rs]
        results[path] = {"rx_pps_median": statistics.median(rx_pps), "rx_pps_runs": rx_pps,
                         "offered_pps_median": statistics.median(r["pps"] for r in rs),
                         "lost_runs": [r["lost"] for r in rs],
                         "redirected_runs": [r.get("redirected") for r in rs]}
    block = {"results": results, **ratios({p: s["rx_pps_median"] for p, s in results.items()})}
    per_rep = [ratios({p: s["rx_pps_runs"][i] for p, s in results.items()})
               for i in range(min(len(s["rx_pps_runs"]) for s in results.values()))]
    block["ratio_runs"] = {key: [r[key] for r in per_rep] for key in RATIOS}
    return block


def run(flows: int = 1000, duration: float = 3.0, sizes: list[int] | None = None, reps: int = 3,
        pin_cpu: int | None = None, progress=lambda msg: None, traffic: str = "loop") -> dict:
    """Every path × frame size, `reps` runs each of `duration` s flat out; the result has one
    block per size under "sizes" and, for the readers of one size, the first block's keys at
    the top as well (frame_bytes, results, ratio_*)."""
    plan = frame_sizes(sizes)
    check_args(flows, duration, reps, pin_cpu, traffic)
    name = "bd" + secrets.token_hex(2)
    max_flows = max(65536, flows * 2)
    load_1m = os.getloadavg()[0]
    host0 = host.cpu_times()
    blocks = []
    progress(f"testbed {name}: chain, nat")
    builder.up(name, topology.load("chain"), "nat", max_flows=max_flows, agents=False)
    try:
        rec = registry.load(name)
        progress("the bare forward and an IDS for nf0")
        with NfPaths(rec, "nf0", max_flows=max_flows) as paths:
            ids = paths.ids_config
            ids_config = {"scan_threshold": ids.scan_threshold, "signatures": len(ids.signatures),
                          "drop_uninspected": ids.drop_uninspected}
            for size in plan:
                if size["requested_bytes"] not in (None, size["frame_bytes"]):
                    progress(f"{size['requested_bytes']} B is below the generator's smallest UDP frame: "
                             f"measured as {size['frame_bytes']} B")
                with rig(name, flows, size["frame_bytes"], pin_cpu=pin_cpu, loop=traffic == "loop") as (gen, sink):
                    transport = gen.transport
                    runs: dict[str, list[dict]] = {p: [] for p in PATHS}
                    for i in range(reps):
                        for path in PATHS:
                            progress(f"{gen.size} B frames, run {i + 1}/{reps}: {path}")
                            paths.use(path)
                            before = paths.redirected(path)
                            r = measure(gen, sink, None, duration, settle_s=1.0)
                            after = paths.redirected(path)
                            r["redirected"] = None if before is None else after - before
                            runs[path].append(r)
                    blocks.append({**size, "frame_bytes": gen.size, **summarise(runs)})
    finally:
        builder.down(name)
    first = blocks[0]
    return {"testbed": name, "topology": "chain (h1 -> nf0 -> h2)", "flows": flows, "duration_s": duration,
            "reps": reps, "paths": list(PATHS), "pin_cpu": pin_cpu, "cpus": len(os.sched_getaffinity(0)),
            "loadavg_1m": load_1m, "steal_pct": host.steal_pct(host0, host.cpu_times()), "ids_config": ids_config,
            "kernel": os.uname().release, "traffic": traffic, "transport": transport,
            "frame_bytes": first["frame_bytes"], "results": first["results"],
            **{key: first[key] for key in RATIOS}, "sizes": blocks}
