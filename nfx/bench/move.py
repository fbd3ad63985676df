"""nfx bench move: moves under load, a matrix of mechanism x guarantee x optimisations x rate x
flows x control-channel delay, each cell judged by the sink; and `--table1`, the DiST paper's
Table 1 setting (seeds/dist-distributed-state-transfer.txt) measured next to the paper's figures.

Each flow count gets its own sharp testbed with two NAT instances, sized for it. There every flow first gets its state on nf0 (warm-up: one packet per
flow until nf0 holds all of them). Each cell then (1) touches every flow once more on nf0 so all start equally fresh,
(2) runs traffic at the cell's rate and, `at` seconds in, asks the testbed's controller to move
everything nf0 -> nf1 (`ctrl_delay_ms`, and `ctrl_rate_mbit` if set, put every controller <->
agent/switch message through an emulated control link; the data plane gets nothing), (3) reads the move's metrics and the sink's report (sent,
lost, duplicated, reordered, latency), (4) moves everything back nf1 -> nf0 with no traffic
(ng, no delay) and checks nf0 holds every flow again and nf1 none, so the next cell starts from
the same situation. LF must show 0 lost and 0 duplicated, OP also 0 reordered: anything else
is a violation, listed loudly.

Flows come from the generator's source ports (1024 + i) and, above what one public address's
port range holds (the NAT's paired pooling sends one inside host out of one public address),
from several inside addresses chosen so that each leaves by a different public address.

State counts: a NAT connection is two per-flow entries (nat_fwd, nat_rev), and the move's
`flows` metric counts those per-flow keys, so N connections are 2N "states" in the paper's
sense (plus N nat_ports entries and the port cursor, which move too and are in state_bytes)."""
import csv
import os
import threading
import time
from datetime import datetime
from pathlib import Path

from ..agent.client import AgentClient
from ..errors import BadInput, NfxError
from ..loader import transmit
from ..migrate import GUARANTEES, MECHANISMS  # nfx.movespec's, filled as nfx.migrate registers them
from ..testbed.drops import path_drops
from ..traffic.report import measure
from . import host
from .ci import mean_ci
from .move_bed import Bed, testbed, traffic_rig
from .move_cells import CELL_KEYS, DEFAULT_FLOWS, DEFAULT_RATES, OPTS, cells, judge, link_text, verdict

COLUMNS = ["mode", "testbed", "run", "rep", "mechanism", "guarantee", "opts", "rate_pps", "flows", "ctrl_delay_ms",
           "ctrl_rate_mbit", "data_delay_ms", "data_rate_mbit",
           "ok", "verdict", "error",
           "move_time_s", "redirect_time_s", "total_s", "transfer_s", "states", "state_chunks", "state_bytes",
           "packets_redirected", "controller_packets", "controller_buffer_peak", "instance_buffer_peak",
           "instance_buffered", "max_added_delay_us", "serialization_share", "ser_share", "deser_share",
           "sent", "received", "lost", "duplicated", "reordered", "unexpected", "out_of_window",
           "lat_p50_us", "lat_p99_us", "lat_max_us", "achieved_pps",
           "move_at_s", "move_end_s", "traffic_s", "move_inside_traffic", "refresh_lost", "loadavg",
           "steal_pct", "nf_drops", "path_drops", "ctrl_received", "ctrl_held", "ctrl_dropped_after_cut", "ctrl_injected", "ctrl_left",
           "ph_keys_ms", "ph_held_ms", "ph_state_ms", "ph_steered_ms", "ph_cut_ms",
           "ph_settled_ms"]
METRICS = ["move_time_s", "redirect_time_s", "total_s", "states", "state_chunks", "state_bytes",
           "packets_redirected", "controller_buffer_peak", "instance_buffer_peak", "max_added_delay_us",
           "serialization_share", "ser_share", "deser_share", "sent", "received", "lost", "duplicated",
           "reordered", "lat_p50_us", "lat_p99_us", "lat_max_us"]


# ---- one run ------------------------------------------------------------------------------------
def run_cell(bed: Bed, gen, sink, cell: dict, duration: float, at: float, timeout: float = 30.0,
             split_ser: bool = False) -> dict:
    flows, rate = cell["flows"], cell["rate_pps"]
    bed.home(gen, sink, flows)
    ref = bed.touch(gen, sink, flows)
    row = dict(cell)
    row["refresh_lost"] = ref["lost"]
    row["loadavg"] = round(os.getloadavg()[0], 2)
    err = None
    d0 = bed.drops()
    p0 = path_drops(bed.name)
    # the sink is read only once the move has returned, so packets a move still held when the
    # traffic stopped count as late, not lost
    out, moved = {}, threading.Event()
    host0 = host.cpu_times()
    t = threading.Thread(target=lambda: out.setdefault("r", measure(gen, sink, rate, duration, 1.0,
                                                                    before_read=lambda: moved.wait(timeout * 4))))
    t0 = time.perf_counter()
    t.start()
    time.sleep(at)
    m = {}
    row["move_at_s"] = round(time.perf_counter() - t0, 4)
    try:
        m = bed.move("nf0", "nf1", cell["guarantee"], cell["mechanism"], cell["opts"], cell["ctrl_delay_ms"], timeout,
                     cell.get("ctrl_rate_mbit", 0.0), (cell.get("data_delay_ms", 0.0), cell.get("data_rate_mbit", 0.0)))
    except NfxError as e:
        err = str(e)
    finally:
        row["move_end_s"] = round(time.perf_counter() - t0, 4)
        moved.set()
        t.join()
    row["steal_pct"] = host.steal_pct(host0, host.cpu_times())     # a slow host, told from a slow run
    r = out.get("r")
    if r is None:
        raise NfxError("the traffic run did not finish")
    row["traffic_s"] = round(r["elapsed_s"], 4)
    row["nf_drops"] = " ".join(f"{i}:{k}={v}" for i, d in bed.drops(d0).items() for k, v in sorted(d.items()))
    row["path_drops"] = path_drops(bed.name) - p0      # the interfaces' (a CPU behind), not the move's
    row["move_inside_traffic"] = row["move_end_s"] <= r["elapsed_s"] + 0.05
    for k in ("move_time_s", "redirect_time_s", "total_s", "transfer_s", "state_chunks", "state_bytes",
              "packets_redirected", "controller_packets", "controller_buffer_peak", "instance_buffer_peak",
              "instance_buffered", "max_added_delay_us", "serialization_share"):
        row[k] = m.get(k)
    row["states"] = m.get("flows")
    for k, v in (m.get("controller") or {}).items():
        row[f"ctrl_{k}"] = v
    ph = m.get("phases_ms") or {}
    for p in ("keys", "held", "state", "steered", "settled"):
        row[f"ph_{p}_ms"] = ph.get(p)
    row["ph_cut_ms"] = ph.get("cut", ph.get("drained"))
    for k in ("sent", "received", "lost", "duplicated", "reordered", "unexpected", "out_of_window", "lat_p50_us",
              "lat_p99_us", "lat_max_us"):
        row[k] = r.get(k)
    row["achieved_pps"] = round(r.get("pps", 0.0), 1)
    if err:
        row["ok"], row["verdict"], row["error"] = False, "MOVE FAILED", err
    else:
        row["ok"], row["verdict"] = judge(cell["guarantee"], r)
        row["error"] = ""
        if not row["move_inside_traffic"]:
            row["verdict"] += " (move outlasted the traffic)"
        n1 = bed.held("nf1")
        if n1 < flows:
            row["ok"] = False
            row["verdict"] += f"; VIOLATION: nf1 holds {n1:,} of {flows:,} connections after the move"
    if split_ser and not err:
        row.update(_ser_split(bed, row))
    bed.home(gen, sink, flows)
    return row


def _ser_split(bed: Bed, row: dict) -> dict:
    """The move reports export + import time as one share of its MoveTime. Split it by the
    export : import ratio of a standalone agent push of the same state right after the move:
    nf1 (which now holds it) pushes it into the emptied nf0; the move back then overwrites it."""
    share = row.get("serialization_share") or 0.0
    with AgentClient(bed.name, "nf1", timeout=120) as c:
        p = c.push("nf0")
    ex, im = p.get("export_s") or 0.0, p.get("import_s") or 0.0
    f = ex / (ex + im) if ex + im else 0.5
    return {"ser_share": share * f, "deser_share": share * (1 - f)}


# ---- the bench ----------------------------------------------------------------------------------
def default_csv(table1: bool = False) -> Path:
    root = Path(__file__).resolve().parents[2]
    base = root if (root / "pyproject.toml").exists() else Path.cwd()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return base / "bench" / "results" / f"move{'-table1' if table1 else ''}-{stamp}.csv"


def aggregate(rows: list[dict], keys: tuple) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for gk, rs in groups.items():
        a = dict(zip(keys, gk))
        a["n"] = len(rs)
        a["ok"] = all(r["ok"] for r in rs)
        bad = [r for r in rs if not r["ok"]]
        a["violations"] = len(bad)
        a["verdict"] = verdict(rs, bad)
        for k in METRICS:
            good = [r.get(k) for r in rs if not r.get("error")]
            a[k], a[k + "_ci"] = mean_ci(good)
        out.append(a)
    return out


def _writer(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w", newline="")
    w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    f.flush()
    return f, w


def run(mechanisms=MECHANISMS, guarantees=GUARANTEES, opts=OPTS, rates=DEFAULT_RATES, flows=DEFAULT_FLOWS,
        delays=(0.0,), repeat: int = 1, duration: float = 2.0, at: float = 0.8, csv_path: Path | None = None,
        timeout: float = 30.0, progress=lambda m: None, ctrl_rates=(0.0,), data=(0.0, 0.0)) -> dict:
    """The matrix. Returns {"runs": [...], "summary": [...], "violations": [...], "csv": path, ...}."""
    if repeat < 1:
        raise BadInput("--repeat must be at least 1")
    if not 0 < at < duration:
        raise BadInput("--at must be inside the traffic run (0 < at < duration)")
    todo = cells(mechanisms, guarantees, opts, rates, flows, delays, ctrl_rates=ctrl_rates, data=data)
    if not todo:
        raise BadInput("the selection is empty")
    csv_path = Path(csv_path) if csv_path else default_csv()
    runs, names, aborted = run_cells(todo, repeat, duration, at, csv_path, "matrix", timeout, False, progress)
    summary = aggregate(runs, CELL_KEYS)
    return {"mode": "matrix", "testbeds": names, "aborted": aborted, "cells": len(todo), "repeat": repeat, "duration_s": duration, "move_at_s": at,
            "csv": str(csv_path), "runs": runs, "summary": summary,
            "violations": [r for r in runs if not r["ok"]], "host": host_info()}


def host_info() -> dict:
    """The machine a bench ran on, and how its generator and release path sent (transmit.py)."""
    return {"cpus": os.cpu_count(), "kernel": os.uname().release, "loadavg_end": os.getloadavg(),
            "transport": transmit.mode()}


def run_cells(todo, repeat, duration, at, csv_path, mode, timeout, split_ser, progress) -> tuple[list, list, list]:
    """Every cell `repeat` times, on one fresh testbed per flow count (its NAT tables sized for
    it). Returns (runs, testbed names, aborted groups)."""
    runs: list[dict] = []
    names: list[str] = []
    aborted: list[dict] = []
    f, w = _writer(csv_path)
    total = len(todo) * repeat
    t_start = time.perf_counter()
    by_flows: dict[int, list[dict]] = {}
    for c in todo:
        by_flows.setdefault(c["flows"], []).append(c)
    i = 0
    try:
        for nflows, group in by_flows.items():
            done = i
            try:
                with testbed(nflows, progress) as (name, _):
                    names.append(name)
                    bed = Bed(name, progress)
                    progress(f"{nflows:,} flows: warming up nf0")
                    with traffic_rig(name, nflows) as (gen, sink):
                        bed.clear()
                        bed.establish(gen, sink, nflows)
                        for rep in range(repeat):
                            for c in group:
                                i += 1
                                row = run_cell(bed, gen, sink, c, duration, at, timeout, split_ser)
                                row.update(mode=mode, run=i, rep=rep + 1, testbed=name)
                                runs.append(row)
                                w.writerow(_csv_row(row))
                                f.flush()
                                progress(_line(row, i, total, time.perf_counter() - t_start))
            except NfxError as e:
                # the testbed is in an unknown state: give up on this flow count, go on with the next
                left = len(group) * repeat - (i - done)
                aborted.append({"flows": nflows, "after_run": i, "runs_not_done": left, "error": str(e)})
                progress(f"[bold red]!!! {nflows:,} flows: stopped after run {i} ({left} runs not done): {e}[/bold red]")
                i = done + len(group) * repeat
    finally:
        f.close()
    return runs, names, aborted


def _csv_row(row: dict) -> dict:
    return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}


def _line(r: dict, i: int, total: int, elapsed: float) -> str:
    eta = elapsed / i * (total - i)
    mt = r.get("move_time_s")
    mv = f"move {mt * 1e3:7.1f} ms" if mt is not None else "move   failed  "
    v = r["verdict"]
    colour = "green" if r["ok"] and v.startswith("ok") else ("yellow" if r["ok"] else "bold red")
    return (f"[{i}/{total} eta {eta:4.0f}s] {r['mechanism']:6} {r['guarantee']} {r['opts']:8} "
            f"{r['rate_pps']:>7,} pps {r['flows']:>7,} flows {link_text(r['ctrl_delay_ms'], r.get('ctrl_rate_mbit', 0))}: {mv}, "
            f"sent {r['sent']:,} lost {r['lost']:,} dup {r['duplicated']:,} reo {r['reordered']:,} "
            + (f"steal {r['steal_pct']:g}% " if r.get("steal_pct") else "") +
            f"[{colour}]{v}[/{colour}]" + (f" [red]{r['error'][:160]}[/red]" if r.get("error") else ""))
