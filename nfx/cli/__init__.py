"""nfx command line: one sub-app per area; domain errors become a message on stderr and an exit code."""
import logging
import os
import signal
import sys

import typer

from ..errors import NfxError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Move live network-function state between XDP NF instances, with measured guarantees.")


@app.callback()
def _global(verbose: bool = typer.Option(False, "--verbose", "-v",
                                         help="Show the BPF compiler's messages (else in /run/nfx/compile.log).")):
    if verbose:
        os.environ["NFX_VERBOSE"] = "1"       # children (agents, controller) inherit it


# name on the command line -> (module of nfx.cli, its Typer app or command function), in the
# order `nfx --help` lists them
_AREAS = {"testbed": ("testbed", "app"), "traffic": ("traffic", "app"), "nf": ("nf", "app"),
          "state": ("state", "app"), "bench": ("bench", "app"), "cluster": ("cluster", "app"),
          "orchestrate": ("orchestrate", "app"), "controller": ("move", "app"),
          "move": ("move", "move"), "handover": ("move", "handover"), "inspect": ("inspect", "inspect")}


def register(argv: list[str]) -> None:
    """Add the area the command line names, or every area when it names none (`nfx --help`, a
    typo). An area's module imports what its commands need (the testbed builder, the benches,
    numpy, ...): importing all of them is most of a command's start (0.4 of 0.6 s here)."""
    import importlib
    words = [a for a in argv if not a.startswith("-")]
    names = [words[0]] if words and words[0] in _AREAS else list(_AREAS)
    for name in names:
        module, attr = _AREAS[name]
        obj = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        if attr == "app":
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


def _terminated(signum, frame):
    # a SIGTERM (kill, a CI timeout) unwinds like ^C: what a command made is taken down on the way out
    raise KeyboardInterrupt


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="nfx: %(levelname)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        # outside standalone mode click returns a command's typer.Exit code instead of exiting
        register(sys.argv[1:])
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
