"""nfx move, and nfx controller start|stop|status|moves"""
import typer
from rich.table import Table

from ..procs import controller
from ..errors import BadInput
from ..migrate import GUARANTEES, MECHANISMS
from ..movespec import MoveMetrics
from .common import JsonOpt, NameOpt, console, emit_json, need_root, out

app = typer.Typer(no_args_is_help=True, help="The testbed's controller (northbound API on 127.0.0.1).")


def move(name: str = NameOpt,
         src: str = typer.Option(None, "--from", help="Source instance (e.g. nf0); SHarP finds it itself."),
         dst: str = typer.Option(..., "--to", help="Destination instance; a joined testbed's lent one as INSTANCE@TESTBED (slim, dup)."),
         filter_: str = typer.Option("all", "--filter", "-f", help="Flows to move: proto=udp src=10.0.1.0/24 sport=... (both directions)."),
         scope: str = typer.Option("all", "--scope", help="per-flow, multi-flow, all-flows (comma-separated) or all."),
         guarantee: str = typer.Option("lf", "--guarantee", "-g", help=f"{'|'.join(GUARANTEES)}"),
         opt: str = typer.Option("", "--opt", help="Optimisations: pz,ll,er (the papers'), pc,ov,dt (nfx's, dist only), rt (nfx's, slim only). pc: "
                                 "late locking paced by the destination's releases, short holds (with pz,ll,er); ov: overlap "
                                 "steering with the state push (lf, op); dt: data-plane trigger (ng or lf, filter all); rt: SLiM's "
                                 "cut at real-time priority."),
         mechanism: str = typer.Option("dist", "--mechanism", "-m", help=f"{'|'.join(MECHANISMS + ['sharp'])} "
                                       "(sharp: `nfx handover`, priority 0)"),
         timeout: float = typer.Option(30.0, "--timeout", help="Seconds any one step may take before the move rolls back."),
         data_delay_ms: float = typer.Option(0.0, "--data-delay-ms",
                                             help="Emulated one-way delay between the instances (agent to agent: dist's state push)."),
         data_rate_mbit: float = typer.Option(0.0, "--data-rate-mbit",
                                              help="Emulated rate between the instances, Mbit/s (0: unlimited)."),
         json_: bool = JsonOpt):
    """Move flows and their state from one NF instance to another, with the chosen guarantee."""
    need_root()
    if data_delay_ms < 0 or data_rate_mbit < 0:
        raise BadInput("--data-delay-ms and --data-rate-mbit must be >= 0")
    if mechanism == "sharp":
        if guarantee not in ("lf", "op"):
            raise BadInput("SHarP hands flows over loss-free and order-preserving (op) only")
        body = {"filter": filter_, "priority": 0, "dst": dst, "scopes": scope, "timeout": timeout}
        if src is not None:
            body["src"] = src
        _show_handover(controller.call(name, "POST", "/handover", body, timeout=timeout * 4 + 30), json_)
        return
    if src is None:
        raise BadInput("--from is needed: only SHarP (--mechanism sharp) finds the source itself")
    m = controller.call(name, "POST", "/move", {"src": src, "dst": dst, "filter": filter_, "scopes": scope,
                                                "guarantee": guarantee, "opts": opt, "mechanism": mechanism,
                                                "timeout": timeout, "data_delay_ms": data_delay_ms,
                                                "data_rate_mbit": data_rate_mbit}, timeout=timeout * 4 + 30)
    if json_:
        emit_json(m)
        return
    mm = MoveMetrics.from_dict(m)
    t = Table(title=mm.title())
    t.add_column("metric")
    t.add_column("value", justify="right")
    for label, value in mm.rows():
        t.add_row(label, value)
    for label, value in slim_rows(m):
        t.add_row(label, value)
    out.print(t)


def slim_rows(m: dict) -> list[tuple[str, str]]:
    """A SLiM move's own figures: what went on the wire and how much the statelets weigh."""
    s, w = m.get("slim"), m.get("bytes_on_wire")
    if not s or not w:
        return []
    return [("snapshot entries", f"{s['snapshot_entries']:,}"), ("statelet records", f"{s['statelet_records']:,}"),
            ("statelet factor σ", f"{s['sigma']:.3f}" if s.get("sigma") is not None else "-"),
            ("bytes on the wire (snapshot + statelets)", f"{w['snapshot']:,} + {w['statelets']:,}"),
            ("ring drops → fresh snapshots", f"{s['statelet_ring_drops']:,} → {s['resyncs']}")]


def handover(name: str = NameOpt,
             filter_: str = typer.Option("all", "--filter", "-f", help="Flows to hand over (a wildcard or one flow)."),
             priority: int = typer.Option(0, "--priority", "-r", help="r: a higher r overrides a lower one where they overlap."),
             dst: str = typer.Option(..., "--to", help="Destination instance (the source is where the flows go today)."),
             scope: str = typer.Option("all", "--scope", help="State to move: per-flow, multi-flow, all-flows or all."),
             max_silence_ms: float = typer.Option(10.0, "--max-silence-ms",
                                                  help="Detection ends after this long without a packet of the filter."),
             state_delay_ms: float = typer.Option(0.0, "--state-delay-ms",
                                                  help="Emulated: the sources wait this long before pushing the state."),
             timeout: float = typer.Option(30.0, "--timeout", help="Seconds any one step may take before it rolls back."),
             json_: bool = JsonOpt):
    """SHarP: hand flows over to another instance, loss-free and in order, buffering at the destination."""
    need_root()
    if max_silence_ms <= 0 or state_delay_ms < 0 or timeout <= 0:
        raise BadInput("--max-silence-ms and --timeout must be > 0, --state-delay-ms >= 0")
    body = {"filter": filter_, "priority": priority, "dst": dst, "scopes": scope, "max_silence_ms": max_silence_ms,
            "state_delay_ms": state_delay_ms, "timeout": timeout}
    _show_handover(controller.call(name, "POST", "/handover", body, timeout=timeout * 4 + 30), json_)


HANDOVER_ROWS = [("handover_s", "handover duration (s)"), ("flows", "flows"),
                 ("controller_buffer_peak", "controller buffer peak"), ("controller_packets", "controller packets"),
                 ("instance_buffered", "buffered at the destination"), ("max_added_delay_us", "max added delay (µs)"),
                 ("state_chunks", "state chunks"), ("state_bytes", "state bytes"), ("transfer_s", "state transfer (s)")]


def _show_handover(m: dict, json_: bool) -> None:
    if json_:
        emit_json(m)
        return
    t = Table(title=f"sharp handover {m['filter']} (r={m['priority']}): {', '.join(m['srcs'])} -> {m['dst']}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for key, label in HANDOVER_ROWS:
        v = m.get(key)
        t.add_row(label, f"{v:,.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
    ib = m.get("instance_buffer_peak") or {}
    t.add_row("instance buffer peak (ctrl_buff / sw_buff)", f"{ib.get('ctrl_buff', 0):,} / {ib.get('sw_buff', 0):,}")
    out.print(t)


@app.command()
def start(name: str = NameOpt,
          ctrl_delay_ms: float = typer.Option(0.0, "--ctrl-delay-ms", help="Emulated one-way delay on every control message."),
          ctrl_rate_mbit: float = typer.Option(0.0, "--ctrl-rate-mbit",
                                               help="Emulated control-link rate, Mbit/s per direction (0: unlimited)."),
          json_: bool = JsonOpt):
    """Start the testbed's controller (testbed up starts one)."""
    need_root()
    if ctrl_delay_ms < 0 or ctrl_rate_mbit < 0:
        raise BadInput("--ctrl-delay-ms and --ctrl-rate-mbit must be >= 0")
    c = controller.start(name, ctrl_delay_ms, ctrl_rate_mbit=ctrl_rate_mbit)
    emit_json(c) if json_ else console.print(f"controller of {name}: pid {c['pid']}, http://127.0.0.1:{c['port']}")


@app.command()
def stop(name: str = NameOpt, json_: bool = JsonOpt):
    """Stop the testbed's controller."""
    need_root()
    ok = controller.stop(name)
    emit_json({"stopped": ok}) if json_ else console.print("stopped" if ok else "no controller was running")


@app.command()
def status(name: str = NameOpt, json_: bool = JsonOpt):
    """The controller's state: moves done, the last move, its control-channel delay."""
    need_root()
    s = controller.call(name, "GET", "/status")
    if json_:
        emit_json(s)
        return
    rate = f", {s['ctrl_rate_mbit']:g} Mbit/s" if s.get("ctrl_rate_mbit") else ""
    out.print(f"controller of {name}: {s['moves']} moves, ctrl link {s['ctrl_delay_ms']:g} ms{rate}, "
              f"{'busy' if s['busy'] else 'idle'}, instances {', '.join(s['instances'])}")


@app.command()
def moves(name: str = NameOpt, json_: bool = JsonOpt):
    """The move log (JSON lines at /run/nfx/moves-<testbed>.jsonl)."""
    need_root()
    ms = controller.call(name, "GET", "/moves")["moves"]
    if json_:
        emit_json({"moves": ms})
        return
    t = Table("mechanism", "guarantee", "opts", "from", "to", "flows", "move s", "redirected")
    for m in ms:
        if m.get("mechanism") == "sharp":
            t.add_row("sharp", "op", f"r={m['priority']}", ",".join(m["srcs"]), m["dst"], str(m["flows"]),
                      f"{m['handover_s']:.4f}", str(m.get("instance_buffered", "")))
            continue
        t.add_row(m["mechanism"], m["guarantee"], ",".join(m["opts"]), m["src"], m["dst"], str(m["flows"]),
                  f"{m['move_time_s']:.4f}", str(m.get("packets_redirected", "")))
    out.print(t)
