"""Options and output helpers every sub-app shares."""
import json
import os
import sys

import typer
from rich.console import Console
from rich.table import Table

from ..errors import NeedRoot

console = Console(stderr=True)
out = Console()

NameOpt = typer.Option(os.environ.get("NFX_TESTBED", "nfx"), "--name", "-n",
                       help="Testbed name (env NFX_TESTBED).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")


def need_root() -> None:
    if os.geteuid() != 0:
        raise NeedRoot("this needs root (XDP, tc, netns and bpffs need CAP_SYS_ADMIN and CAP_NET_ADMIN)",
                       hint="run with sudo")


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def report(result: dict, json_: bool, line) -> None:
    """A command's answer: the JSON object with --json, else `line(result)` for people."""
    if json_:
        emit_json(result)
    else:
        console.print(line(result))


def progress(msg: str) -> None:
    console.print(f"[dim]·[/dim] {msg}")


def show(t: Table, console: Console = out) -> None:
    """Print a table that fits the terminal (80 columns by default): a light frame, and cells
    that wrap instead of being cut, so an address or a number is never shown with an ellipsis."""
    t.box = None
    t.show_edge = False
    t.pad_edge = False
    t.padding = (0, 1)
    t.header_style = "bold underline"
    t.title_justify = "left"
    for c in t.columns:
        c.overflow = "fold"
    console.print(t)


def write_files(plot_dir: str, stem: str, result: dict, table, plot):
    """A bench's raw rows (<stem>.json), markdown table (<stem>.md) and PNGs in plot_dir."""
    import json
    from pathlib import Path
    d = Path(plot_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (d / f"{stem}.md").write_text(table(result))
    result["plots"] = [str(p) for p in plot(result, d)]
    return d


def write_bench(plot_dir: str, stem: str, result: dict, table, plot, json_: bool) -> None:
    """A bench's results (write_files), then the table (or, --json, the whole result) on stdout."""
    d = write_files(plot_dir, stem, result, table, plot)
    if json_:
        emit_json(result)
    else:
        out.print(table(result))
        out.print(f"plots: {', '.join(result['plots'])}; raw rows: {d / (stem + '.json')}")
