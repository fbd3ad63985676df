"""Options and output helpers every sub-app shares."""
import json
import os
import sys

import typer
from rich.console import Console

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


def progress(msg: str) -> None:
    console.print(f"[dim]·[/dim] {msg}")
