"""nfx bench dataplane: packets per second through the XDP NAT, then through the kernel's own
NAT (nftables masquerade + conntrack) and plain kernel forwarding, on the same chain testbed,
with the same generator and sink, in one run."""
import secrets
import statistics

from .. import registry

from ..testbed import builder, topology
from ..traffic.rig import rig
from ..traffic.report import measure
from . import kernel_nat


def run(flows: int = 1000, duration: float = 3.0, size: int | None = None, reps: int = 3,
        progress=lambda msg: None) -> dict:
    name = "bd" + secrets.token_hex(2)
    results: dict[str, list[dict]] = {}
    builder.up(name, topology.load("chain"), "nat", max_flows=max(65536, flows * 2))
    try:
        rec = registry.load(name)
        with rig(name, flows, size) as (gen, sink):
            def series(label):
                results[label] = []
                for i in range(reps):
                    progress(f"{label}: run {i + 1}/{reps}")
                    results[label].append(measure(gen, sink, None, duration, settle_s=1.0))
            series("xdp_nat")
            kernel_nat.to_kernel_router(rec)
            kernel_nat.masquerade(rec, True)
            series("nft_masquerade")
            kernel_nat.masquerade(rec, False)
            series("kernel_forward")
            frame = gen.size
    finally:
        builder.down(name)
    summary = {}
    for label, runs in results.items():
        rx_pps = [r["received"] / r["elapsed_s"] for r in runs]
        summary[label] = {"rx_pps_median": statistics.median(rx_pps), "rx_pps_runs": rx_pps,
                          "offered_pps_median": statistics.median(r["pps"] for r in runs),
                          "lost_runs": [r["lost"] for r in runs]}
    x, n = summary["xdp_nat"]["rx_pps_median"], summary["nft_masquerade"]["rx_pps_median"]
    return {"topology": "chain (h1 -> nf0 -> h2)", "flows": flows, "frame_bytes": frame, "duration_s": duration,
            "reps": reps, "results": summary, "ratio_xdp_over_nft": x / n if n else None,
            "ratio_xdp_over_kernel_forward": x / summary["kernel_forward"]["rx_pps_median"]}
