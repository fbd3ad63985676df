"""nfx traffic run"""
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import BadInput
from ..traffic import rig
from .common import JsonOpt, NameOpt, console, emit_json, need_root, show

app = typer.Typer(no_args_is_help=True, help="Generate traffic through a testbed and check it at the sink.")


@app.command()
def run(name: str = NameOpt,
        flows: int = typer.Option(1000, "--flows", "-f", help="Distinct flows (source address/port pairs)."),
        rate: float = typer.Option(100000, "--rate", "-r", help="Packets per second; 0 = as fast as possible."),
        duration: float = typer.Option(5.0, "--duration", "-d", help="Seconds of sending."),
        size: int = typer.Option(None, "--size", "-s", help="Frame size in bytes (default: the smallest)."),
        proto: str = typer.Option("udp", "--proto", help="udp or tcp (TCP-flagged segments)."),
        echo: bool = typer.Option(False, "--echo", help="h2 reflects every packet back to h1, which "
                                  "counts the echoes and times the round trip (adds an 'echo' section)."),
        json_: bool = JsonOpt):
    """Send numbered packets from h1 to h2; report sent/received/lost/reordered/duplicated/unexpected/latency
    (with --echo also the return path and the round-trip time)."""
    need_root()
    if flows < 1 or flows > 1_000_000:
        raise BadInput("--flows must be 1..1000000")
    if duration <= 0 or duration > 3600:
        raise BadInput("--duration must be in (0, 3600] seconds")
    if rate < 0:
        raise BadInput("--rate must be >= 0")
    if json_:
        r = rig.run(name, flows, rate or None, duration, size, proto, echo=echo)
        emit_json(r)
        return
    with Progress(TextColumn("sending"), BarColumn(), TextColumn("{task.fields[sent]:,} pkts"),
                  TimeElapsedColumn(), console=console, transient=True) as prog:
        task = prog.add_task("send", total=duration, sent=0)
        r = rig.run(name, flows, rate or None, duration, size, proto,
                    progress=lambda sent, el: prog.update(task, completed=el, sent=sent), echo=echo)
    t = Table(title=f"{name}: {flows:,} flows, {r['size']} B {proto}, {duration:g} s",
              caption=f"sent by {r['transport']} test runs")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("sent", "received", "lost", "duplicated", "reordered", "unexpected", "out_of_window", "bad_len",
              "bad_payload", "pps"):
        t.add_row(k, f"{r[k]:,.0f}")
    for k in ("lat_p50_us", "lat_p99_us", "lat_max_us"):
        t.add_row(k, "-" if r[k] is None else f"{r[k]:.1f}")
    # clean: every packet judged, none lost, duplicated, reordered or unattributable
    t.add_row("clean", "yes" if r["clean"] else "[red]NO[/red]" + ("" if r["exact"] else " (not exact)"))
    if echo:
        e = r["echo"]
        for k in ("reflected", "received", "lost", "lost_round_trip", "duplicated", "reordered"):
            t.add_row(f"echo {k}", f"{e[k]:,.0f}")
        for k in ("rtt_p50_us", "rtt_p99_us", "rtt_max_us"):
            t.add_row(f"echo {k}", "-" if e[k] is None else f"{e[k]:.1f}")
        t.add_row("echo clean", "yes" if e["clean"] else "[red]NO[/red]" + ("" if e["exact"] else " (not exact)"))
    show(t)
