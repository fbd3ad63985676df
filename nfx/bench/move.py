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
import ipaddress
import math
import os
import secrets
import statistics
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ..errors import BadInput, NfxError
from ..migrate import GUARANTEES, MECHANISMS  # nfx.movespec's, filled as nfx.migrate registers them
from ..traffic.report import measure

OPTS = ("none", "pz", "pz,ll,er")
# the default matrix: 2 x 3 x 3 x 2 x 2 = 72 cells, a few minutes on the 2-vCPU VM
DEFAULT_RATES = (10_000, 100_000)
DEFAULT_FLOWS = (1000, 10_000)
# the full matrix (README): --rates 1000,10000,100000,200000 --flows 100,1000,10000,100000
FULL_RATES = (1000, 10_000, 100_000, 200_000)
FULL_FLOWS = (100, 1000, 10_000, 100_000)
# NF reason counters that mean a packet went nowhere (not v_drop: buffered and to-controller
# packets are copied to the ring and then dropped; nor r_op_pre_ibc: op drops the switch's copy
# of what the source already has, by design)
DROP_STATS = ("v_aborted", "r_gate_drop", "r_buf_ring_full", "r_redirect_fail", "r_release_bad", "r_no_port",
              "r_nat_no_mapping", "r_nat_ports_exhausted", "r_nat_map_full")
WARM_PPS = 200_000           # warm-up and per-cell refresh: one packet per flow at this rate
PORT_USE = 0.75              # fill at most this much of one public address's port range

COLUMNS = ["mode", "testbed", "run", "rep", "mechanism", "guarantee", "opts", "rate_pps", "flows", "ctrl_delay_ms",
           "ctrl_rate_mbit", "data_delay_ms", "data_rate_mbit",
           "ok", "verdict", "error",
           "move_time_s", "redirect_time_s", "total_s", "transfer_s", "states", "state_chunks", "state_bytes",
           "packets_redirected", "controller_packets", "controller_buffer_peak", "instance_buffer_peak",
           "instance_buffered", "max_added_delay_us", "serialization_share", "ser_share", "deser_share",
           "sent", "received", "lost", "duplicated", "reordered", "unexpected", "out_of_window",
           "lat_p50_us", "lat_p99_us", "lat_max_us", "achieved_pps",
           "move_at_s", "move_end_s", "traffic_s", "move_inside_traffic", "refresh_lost", "loadavg",
           "nf_drops", "ctrl_received", "ctrl_held", "ctrl_dropped_after_cut", "ctrl_injected", "ctrl_left",
           "ph_keys_ms", "ph_held_ms", "ph_state_ms", "ph_released_ms", "ph_steered_ms", "ph_cut_ms",
           "ph_settled_ms"]
METRICS = ["move_time_s", "redirect_time_s", "total_s", "states", "state_chunks", "state_bytes",
           "packets_redirected", "controller_buffer_peak", "instance_buffer_peak", "max_added_delay_us",
           "serialization_share", "ser_share", "deser_share", "sent", "received", "lost", "duplicated",
           "reordered", "lat_p50_us", "lat_p99_us", "lat_max_us"]

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def mean_ci(xs: list) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95% confidence interval (Student's t); None for no data."""
    xs = [float(x) for x in xs if x is not None and x != ""]
    if not xs:
        return None, None
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    t = _T975[len(xs) - 2] if len(xs) - 2 < len(_T975) else 1.96
    return m, t * statistics.stdev(xs) / math.sqrt(len(xs))


# ---- choosing what to run -----------------------------------------------------------------------
def _split(text, cast=str) -> list:
    items = []
    for part in (text if isinstance(text, (list, tuple)) else [text]):
        items += [x.strip() for x in str(part).split(",") if x.strip()]
    try:
        return [cast(x) for x in items]
    except ValueError as e:
        raise BadInput(f"bad list {text!r}: {e}") from None


def parse_opts_list(values) -> list[str]:
    """--opts: repeatable, each one set ('none', 'pz', 'pz,ll,er' or 'pz|ll|er'); ';' separates
    several sets in one value."""
    from ..migrate.mechanisms import OPTIMISATIONS, parse_opts
    out = []
    for v in (values if isinstance(values, (list, tuple)) else [values]):
        for s in str(v).split(";"):
            s = s.strip().lower()
            if not s:
                continue
            o = set() if s in ("none", "-", "") else parse_opts(s)
            norm = ",".join(x for x in OPTIMISATIONS if x in o) or "none"
            if norm not in out:
                out.append(norm)
    if not out:
        raise BadInput("--opts selects nothing")
    return out


def cells(mechanisms, guarantees, opts, rates, flows, delays, skip_ng_opts: bool = True,
          ctrl_rates=(0.0,), data=(0.0, 0.0)) -> list[dict]:
    for m in mechanisms:
        if m not in MECHANISMS:
            raise BadInput(f"unknown mechanism {m!r}: {', '.join(MECHANISMS)}")
    for g in guarantees:
        if g not in GUARANTEES:
            raise BadInput(f"unknown guarantee {g!r}: {', '.join(GUARANTEES)}")
    for r in rates:
        if not 1 <= r <= 2_000_000:
            raise BadInput("rates must be 1..2000000 pps")
    for f in flows:
        if not 1 <= f <= 200_000:
            raise BadInput("flows must be 1..200000")
    for d in delays:
        if not 0 <= d <= 1000:
            raise BadInput("control delays must be 0..1000 ms")
    for b in ctrl_rates:
        if not 0 <= b <= 100_000:
            raise BadInput("control link rates must be 0..100000 Mbit/s (0: unlimited)")
    out = []
    for f in flows:
        for d, b in ((d, b) for d in delays for b in ctrl_rates):
            for r in rates:
                for m in mechanisms:
                    for g in guarantees:
                        for o in opts:
                            oset = set(o.split(","))
                            # ng holds nothing back: ll and er do nothing there (pz still pipelines)
                            if skip_ng_opts and g == "ng" and oset & {"ll", "er"}:
                                continue
                            if "dt" in oset and (m != "dist" or g == "op"):
                                continue          # the trigger is dist's, for ng and lf
                            if "ov" in oset and (m != "dist" or g == "ng"):
                                continue          # the overlap is dist's, for lf and op
                            out.append({"mechanism": m, "guarantee": g, "opts": o, "rate_pps": r, "flows": f,
                                        "ctrl_delay_ms": d, "ctrl_rate_mbit": b,
                                        "data_delay_ms": data[0], "data_rate_mbit": data[1]})
    return out


# what each guarantee forbids, as the sink counts it. Every guarantee forbids `unexpected`
# (packets the sink cannot attribute to a generated flow/seq: the measurement itself is off);
# LF and OP also `out_of_window` (packets the sink could not judge dup or new prove nothing).
FORBIDDEN = {"ng": ("unexpected",),
             "lf": ("lost", "duplicated", "unexpected", "out_of_window"),
             "op": ("lost", "duplicated", "reordered", "unexpected", "out_of_window")}


def judge(guarantee: str, r: dict) -> tuple[bool, str]:
    """LF: 0 lost, 0 duplicated; OP: also 0 reordered; NG: nothing promised about the flows.
    All: 0 unexpected; LF, OP: 0 out_of_window (see FORBIDDEN)."""
    bad = [f"{k} {r[k]:,}" for k in FORBIDDEN[guarantee] if r.get(k)]
    if bad:
        return False, "VIOLATION: " + ", ".join(bad)
    return (True, f"ng (lost {r['lost']:,})") if guarantee == "ng" else (True, "ok")


# ---- the testbed ----------------------------------------------------------------------------------
def _pool_hash(h: int) -> int:
    """nat_alloc's paired-pooling hash of an inside address (host order), u32 arithmetic."""
    h ^= h >> 16
    h = (h * 0x45D9F3B) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def addressing(flows: int, host_ip: str, inside: str, pool_count: int, span: int) -> tuple[str, int]:
    """(first source address, flows per address) for `flows` connections: one address (the
    generator host's own) while a public address's port range holds them comfortably, else k
    consecutive inside addresses that the paired pooling sends out of k different public addresses."""
    per = int(span * PORT_USE)
    k = max(1, math.ceil(flows / per))
    if k == 1:
        return host_ip, flows
    if k > pool_count:
        raise BadInput(f"{flows:,} flows need {k} public addresses; the NAT pool has {pool_count} "
                       f"({pool_count * per:,} flows at most)")
    net = ipaddress.IPv4Network(inside)
    first = int(ipaddress.IPv4Address(host_ip))
    last = int(net.broadcast_address) - 1
    for a in range(first, last - k + 2):
        if len({_pool_hash(a + i) % pool_count for i in range(k)}) == k:
            return str(ipaddress.IPv4Address(a)), math.ceil(flows / k)
    raise BadInput(f"no {k} consecutive inside addresses leave by different public addresses")


def traffic_rig(name: str, flows: int):
    """nfx.traffic.rig.rig, with the source addresses planned by `addressing`."""
    from ..testbed import builder, state
    from ..traffic.rig import _hosts, rig
    src, _ = _hosts(state.load(name))
    cfg = builder.instance(name, "nf0").config()
    first, fpa = addressing(flows, src["addr"].split("/")[0], str(ipaddress.IPv4Interface(src["addr"]).network),
                            cfg.pool_count, cfg.port_hi - cfg.port_lo + 1)
    return rig(name, flows, src_ip=first, flows_per_addr=fpa)


class Bed:
    """The bench's testbed: its two instances, where the state is, the moves through its controller."""

    def __init__(self, name: str, progress):
        from ..testbed import builder
        self.name, self.progress = name, progress
        self.nf = {i: builder.instance(name, i) for i in ("nf0", "nf1")}

    def held(self, inst: str) -> int:
        """Connections (nat_fwd entries) an instance holds."""
        return len(self.nf[inst].maps["nat_fwd"])

    def drops(self, before: dict | None = None) -> dict:
        """Drop counters of both instances (deltas from `before` if given)."""
        now = {i: {k: v for k, v in nf.stats().items() if k in DROP_STATS} for i, nf in self.nf.items()}
        if before is None:
            return now
        return {i: {k: v - before[i].get(k, 0) for k, v in now[i].items() if v - before[i].get(k, 0)} for i in now}

    def move(self, src, dst, guarantee, mechanism, opts, delay_ms, timeout=30.0, rate_mbit: float = 0.0,
             data=(0.0, 0.0)) -> dict:
        from ..control import lifecycle
        return lifecycle.call(self.name, "POST", "/move",
                              {"src": src, "dst": dst, "filter": "all", "scopes": "all", "guarantee": guarantee,
                               "opts": "" if opts == "none" else opts, "mechanism": mechanism,
                               "timeout": timeout, "ctrl_delay_ms": delay_ms, "ctrl_rate_mbit": rate_mbit,
                               "data_delay_ms": data[0], "data_rate_mbit": data[1]},
                              timeout=timeout * 4 + 60)

    def clear(self) -> None:
        from ..agent.client import AgentClient
        for i in ("nf0", "nf1"):
            with AgentClient(self.name, i, timeout=120) as c:
                c.delete()

    def touch(self, gen, sink, flows: int) -> dict:
        """One packet per flow, through wherever the switches send it (nf0 between cells)."""
        rate = min(WARM_PPS, max(flows * 10, 1000))
        return measure(gen, sink, rate, (flows + 0.5) / rate, settle_s=0.5)

    def establish(self, gen, sink, flows: int, tries: int = 6) -> None:
        """Every flow has its state on nf0 and nf1 has none (after a clear)."""
        for i in range(tries):
            r = self.touch(gen, sink, flows)
            n0, n1 = self.held("nf0"), self.held("nf1")
            self.progress(f"  warm-up pass {i + 1}: nf0 holds {n0:,}/{flows:,} connections "
                          f"(sink lost {r['lost']:,})")
            if n0 == flows and n1 == 0:
                return
        raise NfxError(f"could not establish {flows:,} flows on nf0 (nf0 {n0:,}, nf1 {n1:,})")

    def home(self, gen, sink, flows: int) -> None:
        """Back to the starting situation: all state on nf0, none on nf1, steered to nf0."""
        n0, n1 = self.held("nf0"), self.held("nf1")
        if n1 == 0 and n0 == flows:
            return
        try:
            # also points the switches back at nf0, whatever state nf1 has
            self.move("nf1", "nf0", "ng", "dist", "none", 0.0)
        except NfxError as e:
            self.progress(f"  moving back to nf0 failed: {e}")
        n0, n1 = self.held("nf0"), self.held("nf1")
        if n1 == 0 and n0 == flows:
            return
        self.progress(f"  state not where it should be (nf0 {n0:,}, nf1 {n1:,}): clearing and warming up again")
        self.clear()
        self.establish(gen, sink, flows)


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
    # the sink is read only once the move has returned, so packets a move still held when the
    # traffic stopped count as late, not lost
    out, moved = {}, threading.Event()
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
    r = out.get("r")
    if r is None:
        raise NfxError("the traffic run did not finish")
    row["traffic_s"] = round(r["elapsed_s"], 4)
    row["nf_drops"] = " ".join(f"{i}:{k}={v}" for i, d in bed.drops(d0).items() for k, v in sorted(d.items()))
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
    row["ph_released_ms"] = ph.get("released", ph.get("pre-steer"))
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
    from ..agent.client import AgentClient
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


@contextmanager
def _testbed(max_flow_count: int, progress):
    from ..testbed import builder, state, topology
    name = "bm" + secrets.token_hex(3)
    max_flows = max(65536, 1 << (int(max_flow_count * 2.2)).bit_length())
    progress(f"testbed {name}: sharp, 2 NAT instances, max_flows {max_flows:,}")
    builder.up(name, topology.load("sharp", 2), "nat", max_flows, progress=lambda m: progress(f"  {m}"))
    try:
        yield name, max_flows
    finally:
        if state.path(name).exists():
            progress(f"testbed {name} down")
            builder.down(name)


def _aggregate(rows: list[dict], keys: tuple) -> list[dict]:
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
        a["verdict"] = _verdict(rs, bad)
        for k in METRICS:
            good = [r.get(k) for r in rs if not r.get("error")]
            a[k], a[k + "_ci"] = mean_ci(good)
        out.append(a)
    return out


def _verdict(rs: list[dict], bad: list[dict]) -> str:
    """One line for a cell's runs: ok / ng, or what went wrong in how many of them."""
    late = sum(1 for r in rs if r.get("move_inside_traffic") is False)
    tail = f" ({late}/{len(rs)} outlasted the traffic)" if late else ""
    if not bad:
        return ("ng" if rs[0]["guarantee"] == "ng" else "ok") + tail
    parts = []
    for k in FORBIDDEN[rs[0]["guarantee"]]:
        vals = [r[k] for r in bad if r.get(k)]
        if vals:
            lo, hi = min(vals), max(vals)
            parts.append(f"{k} {lo:,}" + (f"-{hi:,}" if hi != lo else ""))
    fails = sum(1 for r in bad if r.get("error"))
    if fails:
        parts.append(f"{fails} move(s) failed")
    if any("nf1 holds" in r["verdict"] for r in bad):
        parts.append("state not all at nf1")
    return f"VIOLATION in {len(bad)}/{len(rs)}: " + ", ".join(parts) + tail


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
    runs, names, aborted = _run_cells(todo, repeat, duration, at, csv_path, "matrix", timeout, False, progress)
    summary = _aggregate(runs, CELL_KEYS)
    return {"mode": "matrix", "testbeds": names, "aborted": aborted, "cells": len(todo), "repeat": repeat, "duration_s": duration, "move_at_s": at,
            "csv": str(csv_path), "runs": runs, "summary": summary,
            "violations": [r for r in runs if not r["ok"]], "host": _host()}


CELL_KEYS = ("mechanism", "guarantee", "opts", "rate_pps", "flows", "ctrl_delay_ms", "ctrl_rate_mbit", "data_delay_ms",
             "data_rate_mbit")


def link_text(delay_ms: float, rate_mbit: float) -> str:
    return f"{delay_ms:g} ms" + (f", {rate_mbit:g} Mbit/s" if rate_mbit else "")


def _host() -> dict:
    return {"cpus": os.cpu_count(), "kernel": os.uname().release, "loadavg_end": os.getloadavg()}


def _run_cells(todo, repeat, duration, at, csv_path, mode, timeout, split_ser, progress) -> tuple[list, list, list]:
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
                with _testbed(nflows, progress) as (name, _):
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
            f"[{colour}]{v}[/{colour}]" + (f" [red]{r['error'][:160]}[/red]" if r.get("error") else ""))
