"""nfx orchestrate check|watch: the orchestration loop's policy, monitor and analyser."""
import signal
import time

import typer

from ..errors import AgentDown, BadInput
from ..orchestrate import policy as P
from ..orchestrate import watch as W
from .common import JsonOpt, NameOpt, console, emit_json, need_root, out

app = typer.Typer(no_args_is_help=True,
                  help="The orchestration loop: a policy, a monitor of every NF instance, an analyser "
                       "raising overload, underload and imbalance, a planner and the actions it takes.")

PolicyOpt = typer.Option(..., "--policy", "-p", help="The policy, a TOML file of sections instance (capacity_pps), "
                         "thresholds, hysteresis and monitor; nfx orchestrate check shows every field.")


def _policy_lines(p: P.Policy) -> str:
    d = p.as_dict()
    lines = [f"policy {p.source or '(defaults)'}: valid"]
    for sec, fields in d.items():
        lines.append(f"[{sec}]")
        lines += [f"  {k} = {v!r}" for k, v in fields.items()]
    cap, t, h = p.instance.capacity_pps, p.thresholds, p.hysteresis
    lines.append(f"overload above {t.overload * cap:,.0f} pps (clears below {(t.overload - h.clear) * cap:,.0f}); "
                 f"underload below {t.underload * cap:,.0f} pps (clears above {(t.underload + h.clear) * cap:,.0f}); "
                 f"imbalance at {t.imbalance:.0%} of the {t.imbalance_basis} (clears below {t.imbalance - h.clear:.0%}); "
                 f"each after {h.samples} samples of {p.monitor.interval_ms} ms in a row")
    return "\n".join(lines)


@app.command()
def check(policy: str = PolicyOpt, json_: bool = JsonOpt):
    """Validate a policy and print it with every default filled in (exit 2 and the field at
    fault if it is refused)."""
    p = P.load(policy)
    if json_:
        emit_json({"policy": p.as_dict(), "source": p.source, "valid": True})
    else:
        out.print(_policy_lines(p), markup=False, highlight=False)


def _status(an, instances: list[str]) -> str:
    parts = []
    for n in instances:
        s = an.latest.get(n)
        if s is None:
            parts.append(f"{n} -")
            continue
        bits = [f"{n} {s.pps:>9,.0f} pps"]
        if s.flows is not None:
            bits.append(f"{s.flows:>6} flows")
        if s.cpu_share is not None:
            bits.append(f"cpu {s.cpu_share:5.1%}")
        if s.drops:
            bits.append(f"{s.drops} dropped")
        parts.append(" ".join(bits))
    act = ", ".join(f"{e.kind} {e.instance}" for e in an.active())
    return " | ".join(parts) + (f"   [{act}]" if act else "")


@app.command()
def watch(name: str = NameOpt, policy: str = PolicyOpt,
          duration: float = typer.Option(None, "--duration", "-d", help="Stop after this many seconds "
                                         "(default: until Ctrl-C)."),
          instance: list[str] = typer.Option(None, "--instance", "-I", help="NF instance to watch "
                                             "(repeatable; default: every one)."),
          every: float = typer.Option(1.0, "--every", help="Seconds between status lines (pps, flows, CPU per "
                                      "instance); 0: one per sample. Conditions print as they are raised and "
                                      "cleared."),
          json_: bool = typer.Option(False, "--json", help="No lines: one JSON object at the end (the policy, "
                                     "per instance its samples, pps, flows, CPU and sampling jitter, the events).")):
    """Monitor every NF instance of a running testbed (its agent's stats stream every
    interval_ms) and analyse the samples against the policy: overload, underload and imbalance,
    raised and cleared with hysteresis. Decides nothing and moves nothing."""
    p = P.load(policy)                              # refused before anything starts
    if duration is not None and duration <= 0:
        raise BadInput(f"--duration must be > 0, not {duration:g}")
    if every < 0:
        raise BadInput(f"--every must be >= 0, not {every:g}")
    need_root()
    t0 = time.time()
    next_line = [0.0]

    def on_sample(s, an):
        now = time.monotonic()
        if now >= next_line[0]:
            next_line[0] = now + every
            out.print(f"{s.t - t0:7.2f}s  " + _status(an, an.instances), markup=False, highlight=False, soft_wrap=True)

    def on_event(ev):
        style = "bold red" if ev.active else "green"
        out.print(f"[{style}]{time.time() - t0:7.2f}s  {W.event_line(ev)}[/{style}]", highlight=False, soft_wrap=True)

    def on_lost(lost):
        console.print(f"[yellow]nfx: {lost.instance}: {lost.error}[/yellow]")

    term = signal.signal(signal.SIGTERM, _interrupt)   # kill ends it as Ctrl-C does, with the summary
    try:
        r = W.run(name, p, duration, instance or None,
                  **({} if json_ else {"on_sample": on_sample, "on_event": on_event, "on_lost": on_lost}))
    finally:
        signal.signal(signal.SIGTERM, term)
    if json_:
        emit_json(r)
    else:
        out.print(_summary_lines(r), markup=False, highlight=False, soft_wrap=True)
    if r["lost"]:
        raise AgentDown("; ".join(f"lost the agent of {n}: {e}" for n, e in r["lost"].items()),
                        hint=f"nfx nf list --name {name}")


@app.command()
def run(name: str = NameOpt, policy: str = PolicyOpt,
        scenario: str = typer.Option(None, "--scenario", "-s", help="Drive the testbed's generator through "
                                     "ramp (low, up in steps to peak, held, down, held), flash (low, peak at once, "
                                     "low), steady (peak) or failure (steady, --kill's instance killed at --kill-at); "
                                     "the sink judges the whole run. Without one the loop runs against whatever "
                                     "traffic there is, for --duration."),
        kill: str = typer.Option(None, "--kill", help="Failure scenario: the instance to kill (its agent SIGKILLed, "
                                 "its program detached); recovered through failover where it has a secondary."),
        kill_at: float = typer.Option(None, "--kill-at", help="Failure scenario: seconds into the traffic "
                                      "(default: halfway)."),
        drain: str = typer.Option(None, "--drain", help="Any scenario: the instance to take out of service and "
                                  "back (maintenance drain): its flows moved to the others (an instance added if "
                                  "they lack room), its program hot-upgraded, its flows moved back; each step a "
                                  "plan with its reason."),
        drain_at: float = typer.Option(None, "--drain-at", help="With --drain: seconds into the traffic "
                                       "(default: a third of the way)."),
        duration: float = typer.Option(None, "--duration", "-d", help="Without --scenario: seconds to run "
                                       "(default: until Ctrl-C)."),
        flows: int = typer.Option(2048, "--flows", help="Scenario: UDP flows."),
        flows_per_addr: int = typer.Option(16, "--flows-per-addr", help="Scenario: flows from each source "
                                           "address (consecutive addresses from the sending host's): the loop "
                                           "moves flows by source prefix."),
        low: float = typer.Option(50_000, "--low", help="Scenario: the low rate, pps."),
        peak: float = typer.Option(400_000, "--peak", help="Scenario: the peak rate, pps."),
        step_s: float = typer.Option(1.0, "--step-s", help="Ramp: seconds per step."),
        hold_s: float = typer.Option(4.0, "--hold-s", help="Seconds at the peak."),
        tail_s: float = typer.Option(6.0, "--tail-s", help="Seconds at the low rate at the end (the scale-in)."),
        out_json: str = typer.Option(None, "--out", help="Write the whole timeline (samples, plans, actions "
                                     "with their move metrics, the traffic's figures) to this JSON file."),
        png: str = typer.Option(None, "--plot", help="Draw the timeline to this PNG."),
        run_stats: bool = typer.Option(False, "--run-stats", help="Count the programs' run time too "
                                       "(BPF_ENABLE_STATS: two clock reads a packet)."),
        json_: bool = typer.Option(False, "--json", help="No lines: the timeline's summary as one JSON object "
                                   "(scale-outs, scale-ins, moves, lost, duplicated, reordered, the interfaces' drops, seconds over budget).")):
    """The orchestration loop on a running testbed: monitor, analyse, plan (which flows go where,
    when to add or remove an instance, with which mechanism), and act: nfx nf add, moves through
    the controller, nfx nf remove; with --drain, a maintenance drain (off, hot upgrade, back).
    Every plan and action is printed with its reason."""
    from ..orchestrate import scenario as S
    from ..orchestrate import session, timeline_plot
    from ..orchestrate.run import Loop
    p = P.load(policy)
    if (scenario == "failure") != (kill is not None) or (kill_at is not None and kill is None):
        raise BadInput("--kill (and --kill-at) go with --scenario failure, which needs --kill")
    if drain_at is not None and drain is None:
        raise BadInput("--drain-at goes with --drain INSTANCE")
    if drain is not None and scenario is None:
        raise BadInput("--drain is a scenario event: give --scenario (steady, ramp, flash or failure)")
    if scenario is not None:
        S.profile(scenario, low, peak, step_s, hold_s, tail_s)      # refused before anything runs
        if duration is not None:
            raise BadInput("--duration is for a run without --scenario (a scenario's length is its profile's)")
        if flows < 1 or flows_per_addr < 1:
            raise BadInput(f"--flows and --flows-per-addr must be at least 1, not {flows} and {flows_per_addr}")
    elif duration is not None and duration <= 0:
        raise BadInput(f"--duration must be > 0, not {duration:g}")
    need_root()
    t0 = time.monotonic()
    say = (lambda m: None) if json_ else \
        (lambda m: out.print(f"{time.monotonic() - t0:7.2f}s  {m}", markup=False, highlight=False, soft_wrap=True))
    term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if scenario is not None:
            tl = session.run(name, p, scenario, flows, flows_per_addr, low, peak, step_s, hold_s, tail_s,
                             run_stats=run_stats, on_line=say, kill=kill, kill_at=kill_at,
                             drain=drain, drain_at=drain_at)
        else:
            try:
                tl = Loop(name, p, run_stats=run_stats, on_line=say).run(duration)
            except KeyboardInterrupt:
                raise
    finally:
        signal.signal(signal.SIGTERM, term)
    if out_json:
        import json
        from pathlib import Path
        Path(out_json).write_text(json.dumps(tl, indent=1, default=str))
    if png:
        timeline_plot.plot(tl, png, f"nfx orchestrate run --scenario {scenario}" if scenario else "nfx orchestrate run")
    s = tl["summary"]
    if json_:
        emit_json(s)
    else:
        out.print(", ".join(f"{k} {v}" for k, v in s.items() if not isinstance(v, dict)), markup=False,
                  highlight=False, soft_wrap=True)


def _interrupt(*_):
    raise KeyboardInterrupt


def _summary_lines(r: dict) -> str:
    lines = [f"{r['seconds']:.1f} s watched; run stats {r['run_stats']}; process CPU {r['process_cpu_s']:.2f} s "
             f"({(r['process_cpu_share'] or 0):.1%})"]
    for n, s in r["instances"].items():
        if not s["samples"]:
            lines.append(f"  {n}: no samples")
            continue
        cpu = "" if s["cpu_share_mean"] is None else f", cpu {s['cpu_share_mean']:.1%}" + \
            (f" ({s['cpu_ns_per_pkt']} ns/pkt)" if s["cpu_ns_per_pkt"] is not None else "")
        lines.append(f"  {n}: {s['samples']} samples, {s['pps_mean']:,.0f} pps mean, {s['pps_max']:,.0f} max, "
                     f"flows {s['flows_last']}{cpu}, jitter p50 {s['jitter_ms']['p50']} ms p99 {s['jitter_ms']['p99']} ms")
    lines.append(f"{len(r['events'])} conditions raised, {len(r['active'])} still held"
                 + (": " + ", ".join(f"{e['kind']} {e['instance']}" for e in r["active"]) if r["active"] else ""))
    return "\n".join(lines)
