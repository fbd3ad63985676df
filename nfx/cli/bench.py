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


@app.command("state")
def state_(flows: int = typer.Option(1_000_000, "--flows", "-f", help="NAT connections in nf0 (3 entries each)."),
           reps: int = typer.Option(3, "--reps", help="Pushes nf0 -> nf1 (median reported)."),
           sample: int = typer.Option(100_000, "--sample", help="Entries for the per-entry baseline (extrapolated)."),
           serial: bool = typer.Option(False, "--serial", help="Import on one thread in the agent."),
           json_: bool = JsonOpt):
    """State export / transfer / import through the agents, each in entries/s, against per-entry map ops."""
    from ..bench import state as bstate
    need_root()
    r = bstate.run(flows, reps, sample, parallel=not serial, progress=(lambda m: None) if json_ else progress)
    if json_:
        emit_json(r)
        return
    t = Table(title=f"state: {flows:,} NAT connections = {r['entries']:,} entries, "
                    f"{r['bytes'] / 1e6:.1f} MB in {r['chunks']} chunks; median of {reps}")
    t.add_column("phase")
    t.add_column("how")
    t.add_column("seconds", justify="right")
    t.add_column("M entries/s", justify="right")
    t.add_column("runs (s)", justify="right")
    rows = [("export", "agent nf0: batch lookup → chunks", r["export"]),
            ("transfer", "nf0 → nf1 agent, TCP on the mgmt bridge", r["transfer"]),
            ("import", "agent nf1: chunks → batch update", r["import"]),
            ("push total", "all three, one push request", r["push_total"])]
    for label, how, p in rows:
        t.add_row(label, how, f"{p['seconds']:.3f}", f"{p['entries_per_s'] / 1e6:.2f}",
                  " ".join(f"{x:.3f}" for x in p["runs_s"]))
    for label, key, how in (("per-entry export", "per_entry_export", "get-next-key + lookup"),
                            ("per-entry import", "per_entry_import", "one update per entry")):
        b = r[key]
        t.add_row(f"{label} [dim](baseline)[/dim]", f"{how}; {b['sample']:,} entries, extrapolated",
                  f"{b['extrapolated_s']:.3f}", f"{b['entries_per_s'] / 1e6:.2f}", f"{b['sample_s']:.3f}")
    out.print(t)
    v = r["verify"]
    out.print(f"batch vs per-entry: export {r['speedup']['export']:.1f}x, import {r['speedup']['import']:.1f}x; "
              f"transfer {r['transfer']['mbytes_per_s']:.0f} MB/s")
    out.print("nf1 == nf0 after import: " + ("[green]yes[/green]" if v["same"] else
              "[red]NO[/red] " + ", ".join(f"{k}: {x['a']} vs {x['b']}" for k, x in v["tables"].items() if not x["same"])))
