"""nfx bench"""
import json
from pathlib import Path

import typer
from rich.table import Table

from ..bench import sharp, sharp_plot, soak
from ..bench import move as bm
from ..bench import state as bstate
from ..bench import statelets as bstl
from ..bench import table1 as t1
from ..bench.move_cells import DEFAULT_FLOWS, DEFAULT_RATES, link_text, parse_opts_list, split
from ..errors import BadInput
from .bench_cluster import cluster_
from .bench_dataplane import dataplane_
from .bench_failover import failover_
from .bench_queues import queues_
from .bench_slim import slim_
from .common import JsonOpt, emit_json, need_root, out, progress, write_bench

app = typer.Typer(no_args_is_help=True, help="Benchmarks with a baseline measured in the same run.")
app.command("dataplane")(dataplane_)


@app.command("state")
def state_(flows: int = typer.Option(1_000_000, "--flows", "-f", help="NAT connections in nf0 (3 entries each)."),
           reps: int = typer.Option(3, "--reps", help="Pushes nf0 -> nf1 (median reported)."),
           sample: int = typer.Option(100_000, "--sample", help="Entries for the per-entry baseline (extrapolated)."),
           serial: bool = typer.Option(False, "--serial", help="Import on one thread in the agent."),
           json_: bool = JsonOpt):
    """State export / transfer / import through the agents, each in entries/s, against per-entry map ops."""
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
            ("push, sequential", "the three one after the other [dim](baseline)[/dim]", r["push_sequential"]),
            ("push total", "pipelined: the three overlap chunk by chunk", r["push_total"])]
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
    b = r["cpu_bound"]
    out.print(f"pipelined push: {r['push_total']['speedup_over_sequential']:.2f}x the sequential one's speed, "
              f"{r['push_total']['over_slowest_leg']:.2f}x its slowest leg's time; the CPUs allow "
              f"{b['entries_per_s'] / 1e6:.2f} M entries/s (export {b['export_cpu_s']:.2f} + import "
              f"{b['import_cpu_s']:.2f} CPU-s over {b['cpus']} CPUs)")
    f = r["kernel_floor"]
    out.print(f"the kernel alone: export {f['export_us']:.3f} + import {f['import_us']:.3f} us of CPU an entry "
              f"(batch lookup, batch update): at most {f['entries_per_s'] / 1e6:.2f} M entries/s on {f['cpus']} CPUs")
    out.print(f"batch vs per-entry: export {r['speedup']['export']:.1f}x, import {r['speedup']['import']:.1f}x; "
              f"transfer {r['transfer']['mbytes_per_s']:.0f} MB/s")
    if r.get("steal_pct"):
        out.print(f"the host stole {r['steal_pct']:g}% of the CPU time meanwhile")
    out.print("nf1 == nf0 after import: " + ("[green]yes[/green]" if v["same"] else
              "[red]NO[/red] " + ", ".join(f"{k}: {x['a']} vs {x['b']}" for k, x in v["tables"].items() if not x["same"])))


@app.command("move")
def move_(mechanisms: str = typer.Option("opennf,dist", "--mechanisms", "-m", help="opennf, dist, dup (comma-separated)."),
          guarantees: str = typer.Option("ng,lf,op", "--guarantees", "-g", help="ng, lf, op (comma-separated)."),
          opts: list[str] = typer.Option(["none", "pz", "pz,ll,er"], "--opts", "-o",
                                         help="Optimisation sets, repeatable (--opts none --opts pz,ll,er) or ';'-separated."),
          rates: str = typer.Option(",".join(map(str, DEFAULT_RATES)), "--rates", "-r", help="Offered pps (comma-separated)."),
          flows: str = typer.Option(",".join(map(str, DEFAULT_FLOWS)), "--flows", "-f", help="Flow counts (comma-separated)."),
          ctrl_delay_ms: str = typer.Option(None, "--ctrl-delay-ms",
                                            help="One-way control-channel delay(s) in ms, comma-separated (default 0; "
                                                 "the DiST paper's gap is 10)."),
          ctrl_rate_mbit: str = typer.Option(None, "--ctrl-rate-mbit",
                                             help="Control-link rate(s) in Mbit/s, comma-separated (default 0: unlimited; "
                                                  "the DiST paper's control links were 10)."),
          repeat: int = typer.Option(None, "--repeat", "-n", help="Runs per cell, mean ± 95% CI when > 1 (default 1; table1 5)."),
          duration: float = typer.Option(None, "--duration", "-d", help="Seconds of traffic per run (default 2; table1 3)."),
          at: float = typer.Option(None, "--at", help="The move starts this many seconds into the traffic (default 0.8; table1 1)."),
          timeout: float = typer.Option(30.0, "--timeout", help="Seconds any one step of a move may take."),
          csv_path: str = typer.Option(None, "--csv", help="CSV of every run (default bench/results/move[-table1]-<time>.csv)."),
          data_delay_ms: float = typer.Option(None, "--data-delay-ms",
                                              help="Emulated one-way delay between the instances, ms (agent to agent: "
                                                   "dist's state push; default 0, table1 1)."),
          data_rate_mbit: float = typer.Option(None, "--data-rate-mbit",
                                               help="Emulated rate between the instances, Mbit/s (default 0: unlimited; table1 100)."),
          table1: bool = typer.Option(False, "--table1", help="The DiST paper's Table 1 setting (1000 pps, ~2200 states, "
                                      "LF PZ and PZ|LL|ER, control link 10 ms + 10 Mbit/s, data link 1 ms + 100 Mbit/s): "
                                      "OpenNF, DiST in the paper's order, and DiST with nfx's ov, dt and both, next to "
                                      "the paper's figures."),
          json_: bool = JsonOpt):
    """Moves under load: mechanism × guarantee × optimisations × rate × flows × control delay, judged by the sink.

    The full matrix: nfx bench move --rates 1000,10000,100000,200000 --flows 100,1000,10000,100000 --ctrl-delay-ms 0,10
    The paper's control link: --ctrl-delay-ms 10 --ctrl-rate-mbit 10"""
    need_root()
    for v in (data_delay_ms, data_rate_mbit):
        if v is not None and v < 0:
            raise BadInput("--data-delay-ms and --data-rate-mbit must be >= 0")
    if table1:
        links = t1.TABLE1_LINKS
        if ctrl_delay_ms or ctrl_rate_mbit:
            links = tuple((d, b) for d in split(ctrl_delay_ms or "10", float)
                          for b in split(ctrl_rate_mbit or "0", float))
        data = (t1.TABLE1_DATA[0] if data_delay_ms is None else data_delay_ms,
                t1.TABLE1_DATA[1] if data_rate_mbit is None else data_rate_mbit)
        r = t1.table1(repeat=repeat or 5, links=links, duration=duration or 3.0, at=at or 1.0, csv_path=csv_path,
                      timeout=timeout, progress=progress, data=data)
    else:
        r = bm.run(split(mechanisms), split(guarantees), parse_opts_list(opts), split(rates, int),
                   split(flows, int), split(ctrl_delay_ms or "0", float), repeat or 1, duration or 2.0, at or 0.8,
                   csv_path, timeout, progress=progress, ctrl_rates=split(ctrl_rate_mbit or "0", float),
                   data=(data_delay_ms or 0.0, data_rate_mbit or 0.0))
    if json_:
        emit_json(r)
        return
    _move_tables(r)


@app.command("soak")
def soak_(moves: int = typer.Option(1000, "--moves", "-n", help="Consecutive moves."),
          flows: int = typer.Option(1000, "--flows", "-f", help="Flows (NAT connections)."),
          rate: int = typer.Option(50_000, "--rate", "-r", help="Offered pps."),
          timeout: float = typer.Option(30.0, "--timeout", help="Seconds any one step of a move may take."),
          guarantees: str = typer.Option("op,lf,ng", "--guarantees", "-g", help="Segments to cycle through, in order."),
          json_: bool = JsonOpt):
    """Consecutive moves under traffic, back and forth between nf0 and nf1 (sharp testbed, 2 NAT
    instances), cycling mechanisms, guarantees and optimisations; the sink judges each run of moves
    of one guarantee. Progress on stderr."""
    need_root()
    if not 1 <= flows <= 60_000 or not 1 <= rate <= 2_000_000:
        raise BadInput("--flows must be 1..60000 and --rate 1..2000000")
    r = soak.run(moves, flows, rate, timeout, progress=progress, guarantees=tuple(split(guarantees)))
    if json_:
        emit_json(r)
    else:
        out.print(f"soak: {r['moves']} moves in {r['elapsed_s']:.0f} s, {r['flows']:,} flows at {r['rate_pps']:,} pps: "
                  f"{r['done']} done, {r['refused']} refused, {r['failed']} failed, {r['misplaced']} with state "
                  f"misplaced, {r['empty']} with an empty flow list")
        for g, b in r["by_guarantee"].items():
            judged = {"ng": "not judged (may lose by design)", "lf": "lost/dup judged", "op": "lost/dup/reo judged"}[g]
            out.print(f"  {g}: {b['done']}/{b['moves']} done in {b['segments']} traffic runs, sent {b['sent']:,}, "
                      f"lost {b['lost']:,} dup {b['duplicated']:,} reo {b['reordered']:,} ({judged}); "
                      f"{b['violating_segments']} run(s) in violation")
        for e in r["errors"]:
            out.print(f"  [red]error: {e}[/red]")
        out.print("[green]ok[/green]" if r["ok"] else "[bold red]NOT OK[/bold red]")
    if not r["ok"]:
        raise typer.Exit(1)


app.command("slim")(slim_)
app.command("cluster")(cluster_)
app.command("queues")(queues_)
app.command("failover")(failover_)


@app.command("sharp")
def sharp_(rates: str = typer.Option(",".join(map(str, sharp.DEFAULT_RATES)), "--rates",
                                     help="Fig. 5's packet rates (pps, comma-separated)."),
           delays: str = typer.Option(",".join(map(str, sharp.DEFAULT_DELAYS_MS)), "--delays",
                                      help="Fig. 7's added state-transfer durations (ms, comma-separated)."),
           repeat: int = typer.Option(3, "--repeat", help="Runs per point."),
           timeout: float = typer.Option(30.0, "--timeout", help="Seconds any one step may take."),
           plot_dir: str = typer.Option("bench/results", "--plot", help="Where the PNGs, the table and the raw rows go."),
           grid: bool = typer.Option(False, "--matrix", help="Instead: handovers of 1, 1,000 and 10,000 flows at 10k and "
                                     "100k pps, NAT and IDS, judged by the sink (writes sharp-matrix.json)."),
           json_: bool = JsonOpt):
    """SHarP's evaluation (Fig. 5: rate; Fig. 7: state-transfer duration) with OpenNF (op) beside it,
    on a testbed of its own. Writes sharp-fig5.png, sharp-fig7.png, sharp.md and sharp.json."""
    need_root()
    if grid:
        r = sharp.matrix(timeout=timeout, progress=progress)
        d = Path(plot_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "sharp-matrix.json").write_text(json.dumps(r, indent=1, default=str))
        if json_:
            emit_json(r)
        else:
            t = Table("nf", "flows", "pps", "sent", "lost", "dup", "reo", "learnt", "handover s", "ctrl peak",
                      "ctrl_buff / sw_buff", "max delay ms")
            for x in r["rows"]:
                t.add_row(x["nf"], f"{x['flows']:,}", f"{x['rate_pps']:,}", f"{x['sent']:,}", str(x["lost"]),
                          str(x["duplicated"]), str(x["reordered"]), f"{x['learnt']:,}", f"{x['handover_s']:.3f}",
                          f"{x['controller_buffer_peak']:,}", f"{x['ctrl_buff_peak']:,} / {x['sw_buff_peak']:,}",
                          f"{x['max_added_delay_ms']:.1f}")
            out.print(t)
        if r["violations"]:
            raise typer.Exit(1)
        return
    r = sharp.run(split(rates, int), split(delays, float), repeat, timeout=timeout, progress=progress)
    write_bench(plot_dir, "sharp", r, sharp_plot.table, sharp_plot.plot, json_)
    if r["violations"]:
        raise typer.Exit(1)


def _pm(v, ci, fmt="{:.1f}", scale=1.0):
    if v is None:
        return "-"
    s = fmt.format(v * scale)
    return s + (f" ±{fmt.format(ci * scale)}" if ci else "")


def _move_tables(r: dict) -> None:
    from rich.console import Console
    # these tables are wide: a pipe or a narrow terminal gets them unsqueezed
    con = out if out.is_terminal and out.width >= 200 else Console(width=240)
    if r["mode"] == "table1":
        _table1(r, con)
    else:
        n = r["repeat"]
        t = Table(title=f"moves under load: {r['cells']} cells × {n} run{'s' if n > 1 else ''}, "
                        f"{r['duration_s']:g} s traffic, move at {r['move_at_s']:g} s"
                        + (" (mean ± 95% CI)" if n > 1 else ""))
        for c, j in (("mech", "left"), ("g", "left"), ("opts", "left"), ("pps", "right"), ("flows", "right"),
                     ("ctrl link", "right"), ("move ms", "right"), ("redir ms", "right"), ("states", "right"),
                     ("state KB", "right"), ("redirected", "right"), ("ctl/inst buf", "right"),
                     ("added µs", "right"), ("ser %", "right"), ("lost", "right"), ("dup", "right"),
                     ("reo", "right"), ("p50/p99 µs", "right"), ("verdict", "left")):
            t.add_column(c, justify=j)
        for a in r["summary"]:
            ok = a["ok"]
            t.add_row(a["mechanism"], a["guarantee"], a["opts"], f"{a['rate_pps']:,}", f"{a['flows']:,}",
                      link_text(a["ctrl_delay_ms"], a["ctrl_rate_mbit"]), _pm(a["move_time_s"], a["move_time_s_ci"], scale=1e3),
                      _pm(a["redirect_time_s"], a["redirect_time_s_ci"], scale=1e3),
                      _pm(a["states"], None, "{:,.0f}"), _pm(a["state_bytes"], None, "{:,.0f}", 1e-3),
                      _pm(a["packets_redirected"], a["packets_redirected_ci"], "{:,.0f}"),
                      f"{_pm(a['controller_buffer_peak'], None, '{:,.0f}')}/{_pm(a['instance_buffer_peak'], None, '{:,.0f}')}",
                      _pm(a["max_added_delay_us"], None, "{:,.0f}"),
                      _pm(a["serialization_share"], None, "{:.1f}", 100),
                      _pm(a["lost"], None, "{:,.0f}"), _pm(a["duplicated"], None, "{:,.0f}"),
                      _pm(a["reordered"], None, "{:,.0f}"),
                      f"{_pm(a['lat_p50_us'], None, '{:.0f}')}/{_pm(a['lat_p99_us'], None, '{:.0f}')}",
                      ("[green]" if ok else "[bold red]") + a["verdict"] + ("[/green]" if ok else "[/bold red]"))
        con.print(t)
    v = r["violations"]
    if v:
        con.print(f"[bold red]!!! {len(v)} run(s) broke their guarantee or failed:[/bold red]")
        for x in v:
            con.print(f"[bold red]  run {x['run']}: {x['mechanism']} {x['guarantee']} {x['opts']} {x['rate_pps']:,} pps "
                      f"{x['flows']:,} flows {link_text(x['ctrl_delay_ms'], x.get('ctrl_rate_mbit', 0))}: {x['verdict']} {x.get('error') or ''}[/bold red]")
    else:
        con.print("[green]every LF run lost and duplicated nothing; every OP run also reordered nothing[/green]")
    for a in r.get("aborted", []):
        con.print(f"[bold red]!!! {a['flows']:,} flows: stopped after run {a['after_run']}, "
                  f"{a['runs_not_done']} run(s) not done: {a['error']}[/bold red]")
    con.print(f"CSV: {r['csv']}")


def _table1(r: dict, con) -> None:
    """Readable in 80 columns: one line per config, the paper's figures above ours."""
    n = r["repeat"]
    dd, db = r["data_link"]
    w = out
    w.print(f"DiST Table 1 setting: {r['rate_pps']:,} pps, {r['connections']:,} NAT connections, LF; "
            f"{n} run{'s' if n > 1 else ''} each, mean ±95% CI. Data link {link_text(dd, db)}.")

    def ms(v, ci):
        if v is None:
            return "-"
        return f"{v * 1e3:.1f}" + (f"±{ci * 1e3:.1f}" if ci else "")
    head = f"{'':6}{'config':22}{'#States':>7}{'#Redir':>7}{'MoveTime ms':>14}{'RedirTime ms':>14}  lost/dup"
    for d, b in r["links"]:
        w.print(f"\n[bold]control link {link_text(d, b)}[/bold]")
        w.print(head)
        for base in ("pz", "pz,ll,er"):
            for p in t1.PAPER_TABLE1:
                if p["opts"] == base:
                    w.print(f"[dim]{'paper':6}{p['config']:22}{p['states'][0]:>7}{p['redirected'][0]:>7}"
                            f"{p['move_time_s'][0] * 1e3:>14.0f}{p['redir_time_s'][0] * 1e3:>14.0f}[/dim]")
            rows = [a for a in r["summary"] if (a["ctrl_delay_ms"], a["ctrl_rate_mbit"]) == (d, b)
                    and (a["opts"] == base or a["opts"].startswith(base + ",") and
                         not set(a["opts"].split(",")) - set(base.split(",")) - {"ov", "dt"})]
            order = [base] + [f"{base},{x}" for x in t1.NFX_OPTS]
            for a in sorted(rows, key=lambda a: (a["mechanism"] != "opennf", order.index(a["opts"])
                                                 if a["opts"] in order else 99)):
                colour = "green" if a["ok"] else "bold red"
                lost = f"{_pm(a['lost'], None, '{:,.0f}')}/{_pm(a['duplicated'], None, '{:,.0f}')}"
                w.print(f"{'nfx':6}{a['config']:22}{_pm(a['states'], None, '{:.0f}'):>7}"
                        f"{_pm(a['packets_redirected'], None, '{:,.0f}'):>7}"
                        f"{ms(a['move_time_s'], a['move_time_s_ci']):>14}{ms(a['redirect_time_s'], a['redirect_time_s_ci']):>14}"
                        f"  [{colour}]{lost}[/{colour}]")
    w.print("")
    for x in r["ratios"]:
        extra = x["dist_opts"][len(x["opts"]):].lstrip(",").upper().replace(",", "|")
        w.print(f"OpenNF / DiST{'|' + extra if extra else ''} LF {x['opts'].upper().replace(',', '|')} "
                f"({link_text(x['ctrl_delay_ms'], x['ctrl_rate_mbit'])}): [bold]{x['opennf_over_dist']:.2f}x[/bold]")
    w.print("paper: " + ", ".join(f"{k}: {v:.1f}x" for k, v in r["paper_ratios"].items()))
    for note in r["notes"]:
        w.print(f"[dim]note: {note}[/dim]")


@app.command("statelets")
def statelets_(nf: str = typer.Option("nat", "--nf", help="nat or ids."),
               flows: int = typer.Option(10_000, "--flows", "-f", help="Distinct flows (half created while mirrored)."),
               packets: int = typer.Option(5, "--packets", "-p", help="Mirrored packets per flow."),
               batch_kib: int = typer.Option(bstl.BATCH_KIB, "--batch-kib", help="Most KiB the reader takes per poll."),
               reps: int = typer.Option(3, "--reps", help="Runs (median reported per leg)."),
               json_: bool = JsonOpt):
    """Statelets written (ring), read (reader) and applied (apply), each leg measured on its own,
    against 1 M statelets/s; baselines (one record / one statelet at a time) from the same run."""
    need_root()
    r = bstl.run(nf, flows, packets, batch_kib, reps, progress=(lambda m: None) if json_ else progress)
    if json_:
        emit_json(r)
        return
    t = Table(title=f"statelets: {nf}, {flows:,} flows x {packets} packets, batches <= {batch_kib} KiB, "
                    f"median of {reps}, load {r['loadavg_1m']:.1f}")
    for c, j in (("leg", "left"), ("M statelets/s", "right"), ("M records/s", "right"), ("statelets", "right"),
                 ("drops", "right"), (">= 1 M/s", "center"), ("runs (M/s)", "right")):
        t.add_column(c, justify=j)
    for leg in r["legs"] + r["baselines"]:
        base = "baseline" in leg["leg"]
        ok = "" if base else ("[green]yes[/green]" if leg["meets_1m"] else "[red]no[/red]")
        t.add_row(leg["leg"], f"{leg['statelets_per_s'] / 1e6:.2f}", f"{leg['records_per_s'] / 1e6:.2f}",
                  f"{leg['statelets']:,}", f"{leg['drops']:,}", ok,
                  " ".join(f"{x / 1e6:.2f}" for x in leg["runs_statelets_per_s"]))
    out.print(t)
    for leg in r["legs"] + r["baselines"]:
        if bstl.note(leg):
            out.print(f"  {leg['leg']}: {bstl.note(leg)}")
    out.print("state after apply == source's: " + ("[green]yes[/green]" if r["same"] else "[red]NO[/red]"))
