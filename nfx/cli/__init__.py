"""nfx command line: one sub-app per area; domain errors become a message on stderr and an exit code."""
import logging
import os
import signal
import sys

import typer

from ..errors import NfxError
from . import bench, cluster, inspect, move, nf, orchestrate, state, testbed, traffic

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Move live network-function state between XDP NF instances, with measured guarantees.")


@app.callback()
def _global(verbose: bool = typer.Option(False, "--verbose", "-v",
                                         help="Show the BPF compiler's messages (else in /run/nfx/compile.log).")):
    if verbose:
        os.environ["NFX_VERBOSE"] = "1"       # children (agents, controller) inherit it


app.add_typer(testbed.app, name="testbed")
app.add_typer(traffic.app, name="traffic")
app.add_typer(nf.app, name="nf")
app.add_typer(state.app, name="state")
app.add_typer(bench.app, name="bench")
app.add_typer(cluster.app, name="cluster")
app.add_typer(orchestrate.app, name="orchestrate")
app.add_typer(move.app, name="controller")
app.command("move")(move.move)
app.command("handover")(move.handover)
app.command("inspect")(inspect.inspect)


def _terminated(signum, frame):
    # a SIGTERM (kill, a CI timeout) unwinds like ^C: what a command made is taken down on the way out
    raise KeyboardInterrupt


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="nfx: %(levelname)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        # outside standalone mode click returns a command's typer.Exit code instead of exiting
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except NfxError as e:
        print(f"nfx: error: {e}", file=sys.stderr)
        if e.hint:
            print(f"nfx: hint: {e.hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("nfx: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("nfx: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        # usage errors (typer's bundled click) know how to show themselves
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        raise
