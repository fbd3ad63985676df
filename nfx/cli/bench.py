"""nfx bench"""
import typer
from rich.table import Table

from ..bench import dataplane
from .common import JsonOpt, emit_json, need_root, out, progress

app = typer.Typer(no_args_is_help=True, help="Benchmarks with a baseline measured in the same run.")


@app.command("dataplane")
def dataplane_(flows: int = typer.Option(1000, "--flows", "-f", help="Distinct flows."),
               duration: float = typer.Option(3.0, "--duration", "-d", help="Seconds per run."),
               size: int = typer.Option(None, "--size", "-s", help="Frame size (default: smallest UDP)."),
               reps: int = typer.Option(3, "--reps", help="Runs per configuration (median reported)."),
               json_: bool = JsonOpt):
    """XDP NAT vs nftables masquerade (and plain forwarding) on one chain testbed: pps at the sink."""
    need_root()
    r = dataplane.run(flows, duration, size, reps, progress=(lambda m: None) if json_ else progress)
    if json_:
        emit_json(r)
        return
    t = Table(title=f"dataplane: {r['topology']}, {flows:,} flows, {r['frame_bytes']} B frames, "
                    f"{duration:g} s × {reps}")
    t.add_column("path")
    t.add_column("received Mpps (median)", justify="right")
    t.add_column("runs", justify="right")
    t.add_column("lost (runs)", justify="right")
    for label, s in r["results"].items():
        t.add_row(label, f"{s['rx_pps_median'] / 1e6:.3f}", " ".join(f"{x / 1e6:.2f}" for x in s["rx_pps_runs"]),
                  " ".join(f"{x:,}" for x in s["lost_runs"]))
    out.print(t)
    out.print(f"XDP NAT / nftables masquerade: [bold]{r['ratio_xdp_over_nft']:.2f}x[/bold]   "
              f"XDP NAT / kernel forwarding: {r['ratio_xdp_over_kernel_forward']:.2f}x")
