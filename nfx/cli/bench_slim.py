"""`nfx bench slim`: SLiM beside duplication (nfx/bench/slim.py), and its acceptance run (--scale)."""
import json
from pathlib import Path

import typer
from rich.table import Table

from ..bench import slim, slim_plot
from ..bench.move_cells import split
from ..errors import BadInput
from .common import JsonOpt, emit_json, need_root, out, progress, write_bench


def wide():
    """A console wide enough for the tables (a pipe or a narrow terminal would squeeze them)."""
    from rich.console import Console
    return out if out.is_terminal and out.width >= 160 else Console(width=200)


def slim_(rates: str = typer.Option(",".join(map(str, slim.RATES_MBIT)), "--rates",
                                    help="Data rates in Mbit/s of frames (comma-separated)."),
          sizes: str = typer.Option(",".join(map(str, slim.SIZES)), "--sizes", help="Frame sizes in bytes (comma-separated)."),
          nfs: str = typer.Option(",".join(slim.NFS), "--nfs", help="NF kinds: nat, ids (comma-separated)."),
          mechanisms: str = typer.Option("slim,dup", "--mechanisms", "-m", help="Mechanisms in each run (comma-separated)."),
          flows: int = typer.Option(slim.FLOWS, "--flows", "-f", help="Flows, all moved in each run."),
          timeout: float = typer.Option(20.0, "--timeout", help="Seconds any one step of a move may take (then it "
                                        "is rolled back and reported as not finished)."),
          plot_dir: str = typer.Option("bench/results", "--plot", help="Where the PNGs, the table and the raw rows go."),
          scale: bool = typer.Option(False, "--scale", help="Instead: SLiM moves (as published, and with rt) of 10,000 "
                                     "flows at 100k pps for each NF, checked against a single instance's state; exit 1 "
                                     "if one lost, reordered or differed (writes slim-scale.json)."),
          repeat: int = typer.Option(None, "--repeat", help="Moves per mechanism and rate (default 1), or with "
                                     "--scale per NF and variant (default 3); the table and plots show medians."),
          joined: float = typer.Option(None, "--joined", help="Move to another testbed's instance, joined over a link "
                                       "of this many Mbit/s each way (0: unshaped): snapshot, statelets and duplicated "
                                       "packets cross it as between two machines. Files get a -joined suffix."),
          json_: bool = JsonOpt):
    """SLiM's evaluation (duration, seconds of loss, seconds of RTT > 15 ms, bytes on the wire
    against the data rate) with duplication in the same runs, on testbeds of their own. Writes
    slim-nat.png, slim-ids.png, slim-fig3.png, slim.md and slim.json."""
    need_root()
    d = Path(plot_dir)
    if repeat is not None and repeat < 1:
        raise BadInput("--repeat must be at least 1")
    if scale:
        r = slim.scale(split(nfs, str), progress=progress, timeout=timeout, repeat=repeat or 3)
        d.mkdir(parents=True, exist_ok=True)
        (d / "slim-scale.json").write_text(json.dumps(r, indent=1, default=str))
        if json_:
            emit_json(r)
        else:
            t = Table("nf", "variant", "move", "pps reached", "lost", "dup", "reo", "migration s", "max held ms",
                      "hold peak", "σ", "state = single instance")
            for x in r["rows"]:
                if x.get("error"):
                    t.add_row(x["nf"], x["variant"], "-", "-", "-", "-", "-", "did not finish", "-", "-", "-", x["error"][:40])
                    continue
                t.add_row(x["nf"], x["variant"], f"{x['src']}→{x['dst']}", f"{x['achieved_pps']:,}", str(x["lost"]),
                          str(x["duplicated"]), str(x["reordered"]), f"{x['migration_s']:.3f}",
                          f"{x['max_added_delay_ms']:.2f}", f"{x['dst_hold_peak']:,}", f"{x['sigma']:.2f}",
                          "yes" if x["state"]["equal"] else "NO")
            wide().print(t)
        if not r["clean"]:
            raise typer.Exit(1)
        return
    r = slim.run(split(rates, float), split(sizes, int), split(nfs, str), split(mechanisms, str), flows, timeout,
                 progress=progress, repeat=repeat or 1, joined=joined)
    write_bench(plot_dir, "slim" if joined is None else "slim-joined", r, slim_plot.table, slim_plot.plot, json_)
    if r["violations"]:
        raise typer.Exit(1)
