"""nfx inspect: watch a testbed's NF instances live, through their agents' event streams."""
import json
import os
import queue
import re
import signal
import sys
import threading
import time

import typer

from ..errors import AgentDown, BadInput, NotFound
from ..inspect import view
from ..inspect.flows import FlowMatch
from ..inspect.model import Model
from ..inspect.decisions import DecisionTail
from ..inspect.watch import Watcher, subscribe
from .. import filter as F
from .. import registry
from .common import NameOpt, console, need_root, out

STREAMS = "stats,alerts,statelets,decisions"
LOCAL = ("decisions",)          # not an agent's: the orchestration loop's log, followed here
REFRESH_S = 0.25


def inspect(name: str = NameOpt,
            instance: list[str] = typer.Option(None, "--instance", "-I", help="NF instance to watch (repeatable; default: every one)."),
            flow: str = typer.Option(None, "--flow", "-f", help="Only alerts, statelets and per-flow rows of these flows "
                                     "(nfx filter: proto=udp src=10.0.1.0/24 sport=1024-1100 ...; 'all' for every flow). "
                                     "Also polls the matching per-flow state every max(1 s, interval)."),
            streams: str = typer.Option(STREAMS, "--streams", help="Event streams, comma-separated (stats, alerts, statelets; "
                                        "decisions: what a running `nfx orchestrate run` decides)."),
            interval: float = typer.Option(0.5, "--interval", help="Seconds between stats events (0.05-3600)."),
            duration: float = typer.Option(None, "--duration", help="Stop after this many seconds (default: until Ctrl-C)."),
            top: int = typer.Option(10, "--top", help="Per-flow rows to show (top N by packets)."),
            json_: bool = typer.Option(False, "--json", help="No screen: every event as one JSON object per line, "
                                       "tagged with instance and stream.")):
    """Watch NF instances live: verdict rates, drop reasons, moves, IDS alerts, statelets, per-flow state,
    and the orchestration loop's decisions.

    One subscription per instance, each in its own thread. Statelets appear only while a STATELET mark or filter mirrors flows. Ctrl-C (or --duration) ends every subscription."""
    match = FlowMatch(F.parse(flow)) if flow is not None else FlowMatch()   # refused before anything starts
    names = _stream_names(streams)
    local = [s for s in names if s in LOCAL]
    names = [s for s in names if s not in LOCAL]
    if not 0.05 <= interval <= 3600:
        raise BadInput(f"--interval: seconds between stats events, 0.05..3600, not {interval:g}")
    if duration is not None and duration <= 0:
        raise BadInput(f"--duration must be > 0, not {duration:g}")
    if not 1 <= top <= 1000:
        raise BadInput(f"--top: 1..1000, not {top}")
    need_root()
    rec = registry.load(name)
    nfs = [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]
    targets = list(dict.fromkeys(instance)) if instance else nfs
    for n in targets:
        if n not in nfs:
            raise NotFound(f"no NF instance {n!r} in testbed {name}", hint=f"instances: {', '.join(nfs) or 'none'}")
    if not targets:
        raise NotFound(f"testbed {name} has no NF instances")

    opened = {}
    try:
        for n in targets:                  # every agent answers before the watch starts
            opened[n] = subscribe(name, n, names or ["stats"], interval)
    except BaseException:
        for c, s in opened.values():
            c.close()
        raise
    if set(names) != set(STREAMS.split(",")) - set(LOCAL):
        for n, (_, s) in opened.items():
            for st, why in s.unavailable.items():
                console.print(f"[yellow]nfx: {n}: stream {st} unavailable:[/yellow] {why}")

    q: queue.Queue = queue.Queue(50_000)
    stop = threading.Event()
    model = Model(name, targets, match, flow)
    watchers = [Watcher(name, n, rec["nodes"][n].get("kind"), opened[n], names or ["stats"], interval, q, stop,
                        flow, top) for n in targets]
    if local:
        watchers.append(DecisionTail(name, q, stop))
    for w in watchers:
        w.start()
    end = time.monotonic() + duration if duration else None
    term = signal.signal(signal.SIGTERM, _interrupt)      # kill ends it as Ctrl-C does
    try:
        (_json_loop if json_ else _live_loop)(model, q, end, names, top)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        _finish(watchers, model, q, json_)
        signal.signal(signal.SIGTERM, term)
    lost = [w for w in watchers if getattr(w, "down", None)]
    if lost:
        raise AgentDown("; ".join(f"lost the agent of {w.instance}: {w.down}" for w in lost),
                        hint=f"nfx nf list --name {name}")


def _interrupt(*_):
    raise KeyboardInterrupt


def _stream_names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if not re.fullmatch(r"[a-z][a-z0-9_-]*", s)]
    if not names or bad:
        raise BadInput(f"--streams: comma-separated stream names such as {STREAMS}, not {text!r}")
    return list(dict.fromkeys(names))


def _events(q: queue.Queue, end: float | None, wait: float):
    """Events until `end`; None now and then (at least every `wait` seconds) so the caller can redraw."""
    while end is None or time.monotonic() < end:
        left = wait if end is None else max(0.0, min(wait, end - time.monotonic()))
        try:
            yield q.get(timeout=left)
        except queue.Empty:
            yield None


def _write(ev: dict) -> None:
    sys.stdout.write(json.dumps(ev, default=str) + "\n")
    sys.stdout.flush()


def _json_loop(model: Model, q, end, names, top) -> None:
    try:
        for ev in _events(q, end, 0.2):
            if ev is not None and model.apply(ev):
                _write(ev)
    except BrokenPipeError:                # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _live_loop(model: Model, q, end, names, top) -> None:
    from rich.live import Live

    def draw():
        return view.screen(model, names, out.size.height if out.is_terminal else 10_000, top)
    with Live(draw(), console=out, auto_refresh=False, vertical_overflow="crop") as live:
        next_draw = 0.0
        try:
            for ev in _events(q, end, REFRESH_S):
                if ev is not None:
                    model.apply(ev)
                if time.monotonic() >= next_draw:
                    live.update(draw(), refresh=True)
                    next_draw = time.monotonic() + REFRESH_S
        finally:                           # the last screen stays: make it current
            live.update(draw(), refresh=True)


def _finish(watchers: list[Watcher], model: Model, q: queue.Queue, json_: bool) -> None:
    """Close every subscription (each watcher ends its own), then pass on what they said last."""
    for w in watchers:
        while w.is_alive():
            try:
                w.join(timeout=1)
            except KeyboardInterrupt:      # a second Ctrl-C: the watchers are daemons, leave them
                return
    while True:
        try:
            ev = q.get_nowait()
        except queue.Empty:
            return
        if model.apply(ev) and json_:
            try:
                _write(ev)
            except BrokenPipeError:
                json_ = False
