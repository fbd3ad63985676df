"""nfx bench soak: many consecutive moves under traffic, back and forth between nf0 and nf1 of a
sharp testbed with two NAT instances, cycling mechanisms (opennf, dist), guarantees (ng, lf, op)
and optimisations (none, pz, pz,ll,er, ov, dt where valid).

How the sink's counts are attributed: the moves run in segments of one guarantee each, and
each segment is one traffic run (the generator keeps sending between and during its moves;
the sink judges at the end of the segment). So an OP segment's lost / duplicated / reordered
belong to its OP moves and nothing else, an LF segment's lost / duplicated to its LF moves; NG
moves may lose packets by design, and their segments are reported but not judged. After every
move the state is checked: the destination holds every connection and (lf, op) the source none.
A move that reports no flows while the source held them is counted as `empty` (the symptom of
issue 9, item 4)."""
import shutil
import threading
import time

from ..procs import agents
from ..procs import controller
from ..errors import BadInput, NfxError
from ..traffic.report import settle
from . import move as bm
from .move_bed import Bed, testbed, traffic_rig
from .move_cells import cells

SEG_OPTS = {"ng": ("none", "pz", "dt"), "lf": ("none", "pz", "pz,ll,er", "ov", "dt"), "op": ("none", "pz", "pz,ll,er", "ov")}
CHUNK_S = 0.25           # the traffic thread sends in runs this long, back to back


def plan(guarantees=("op", "lf", "ng")) -> list[list[tuple[str, str, str]]]:
    """One cycle: an OP, an LF and an NG segment, each every valid (mechanism, opts) once."""
    segs = []
    for g in guarantees:
        if g not in SEG_OPTS:
            raise BadInput(f"unknown guarantee {g!r}: ng, lf, op")
        segs.append([(m, g, o) for m in bm.MECHANISMS for o in SEG_OPTS[g]
                     if cells([m], [g], [o], [1], [1], [0.0])])
    return segs


class _Traffic:
    """The generator sending at `rate` until stopped; the sink judges the whole run."""

    def __init__(self, gen, sink, rate: int):
        self.gen, self.sink, self.rate = gen, sink, rate
        self.stop = threading.Event()
        self.err: list = []
        self.t = threading.Thread(target=self._run, daemon=True, name="soak-traffic")

    def _run(self):
        try:
            while not self.stop.is_set():
                self.gen.run(self.rate, CHUNK_S)
        except BaseException as e:
            self.err.append(e)

    def __enter__(self):
        self.sink.reset()
        self.gen.reset()
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()

    def judge(self) -> dict:
        if self.err:
            raise NfxError(f"the traffic run failed: {self.err[0]}")
        per_flow = self.gen.per_flow_total()
        settle(self.sink, sum(per_flow), 1.0)
        return self.sink.read(per_flow)


def run(moves: int = 1000, flows: int = 1000, rate: int = 50_000, timeout: float = 30.0,
        progress=lambda m: None, guarantees=("op", "lf", "ng")) -> dict:
    if moves < 1:
        raise BadInput("--moves must be at least 1")
    segs = plan(guarantees)
    rows: list[dict] = []
    seg_rows: list[dict] = []
    t_start = time.perf_counter()
    with testbed(flows, progress) as (name, _):
        bed = Bed(name, progress)
        with traffic_rig(name, flows) as (gen, sink):
            bed.clear()
            bed.establish(gen, sink, flows)
            at = "nf0"
            i = 0
            while i < moves:
                for seg in segs:
                    todo = seg[:moves - i]
                    if not todo:
                        break
                    g = todo[0][1]
                    first = len(rows)
                    with _Traffic(gen, sink, rate) as tr:
                        time.sleep(0.3)
                        for mech, _, opts in todo:
                            i += 1
                            row = _one(bed, at, mech, g, opts, flows, timeout)
                            row["n"], row["segment"] = i, len(seg_rows)
                            rows.append(row)
                            if row["result"] == "done":
                                at = row["dst"]
                            progress(_line(row, i, moves, time.perf_counter() - t_start))
                        time.sleep(0.2)
                    s = tr.judge()
                    seg = {"segment": len(seg_rows), "guarantee": g, "moves": len(rows) - first,
                           **{k: s[k] for k in ("sent", "received", "lost", "duplicated", "reordered")}}
                    seg["ok"] = g == "ng" or not (s["lost"] or s["duplicated"] or (g == "op" and s["reordered"]))
                    seg_rows.append(seg)
                    progress(f"  segment {seg['segment']} ({g}, {seg['moves']} moves): sent {s['sent']:,} "
                             f"lost {s['lost']:,} dup {s['duplicated']:,} reo {s['reordered']:,}"
                             + ("" if seg["ok"] else "  VIOLATION"))
                    if i >= moves:
                        break
        logs = _keep_logs(name, progress) if any(r["result"] != "done" for r in rows) else []
    out = summarise(rows, seg_rows, moves, flows, rate, name, time.perf_counter() - t_start)
    out["kept_logs"] = logs
    return out


def _keep_logs(name: str, progress) -> list[str]:
    """A move failed: keep the agents' and the controller's logs (the testbed's go with it)."""
    keep = []
    dest = bm.default_csv().parent
    dest.mkdir(parents=True, exist_ok=True)
    for src, tag in [(agents.log_path(name, i), i) for i in ("nf0", "nf1")] + \
            [(controller.log_path(name), "controller")]:
        if src.exists():
            to = dest / f"soak-{name}-{tag}.log"
            shutil.copy(src, to)
            keep.append(str(to))
    progress(f"  a move failed: logs kept in {', '.join(keep) or '(none found)'}")
    return keep


def _one(bed, src: str, mech: str, g: str, opts: str, flows: int, timeout: float) -> dict:
    dst = "nf1" if src == "nf0" else "nf0"
    row = {"src": src, "dst": dst, "mechanism": mech, "guarantee": g, "opts": opts,
           "src_held_before": bed.held(src), "dst_held_before": bed.held(dst)}
    t0 = time.perf_counter()
    try:
        m = bed.move(src, dst, g, mech, opts, 0.0, timeout)
        row.update(result="done", flows=m.get("flows"), move_time_s=m.get("move_time_s"),
                   packets_redirected=m.get("packets_redirected"))
    except BadInput as e:
        row.update(result="refused", error=str(e))
    except NfxError as e:
        row.update(result="failed", error=str(e))
    row["wall_s"] = round(time.perf_counter() - t0, 4)
    row["src_held"], row["dst_held"] = bed.held(src), bed.held(dst)
    if row["result"] == "done":
        misplaced = row["dst_held"] != flows or (g != "ng" and row["src_held"] != 0)
        row["misplaced"] = misplaced
        row["empty"] = not row.get("flows") and row["src_held_before"] > 0
    return row


def _line(r: dict, i: int, total: int, elapsed: float) -> str:
    eta = elapsed / i * (total - i)
    what = f"{r['mechanism']:6} {r['guarantee']} {r['opts']:8} {r['src']}->{r['dst']}"
    if r["result"] == "done":
        tail = f"done {r['move_time_s'] * 1e3:6.1f} ms, {r['flows']} flows"
        if r.get("misplaced"):
            tail += f" [red]state misplaced: {r['src']} {r['src_held']}, {r['dst']} {r['dst_held']}[/red]"
        if r.get("empty"):
            tail += " [red]empty flow list[/red]"
    else:
        tail = f"[red]{r['result']}: {r.get('error', '')[:120]}[/red]"
    return f"[{i}/{total} eta {eta:4.0f}s] {what}: {tail}"


def summarise(rows, segs, moves, flows, rate, name, elapsed) -> dict:
    def count(pred):
        return sum(1 for r in rows if pred(r))
    out = {"mode": "soak", "testbed": name, "moves": moves, "flows": flows, "rate_pps": rate,
           "elapsed_s": round(elapsed, 1),
           "done": count(lambda r: r["result"] == "done"), "refused": count(lambda r: r["result"] == "refused"),
           "failed": count(lambda r: r["result"] == "failed"),
           "misplaced": count(lambda r: r.get("misplaced")), "empty": count(lambda r: r.get("empty")),
           "by_guarantee": {}, "segments": segs, "runs": rows,
           "errors": sorted({r["error"] for r in rows if r.get("error")})}
    for g in ("ng", "lf", "op"):
        ss = [s for s in segs if s["guarantee"] == g]
        rs = [r for r in rows if r["guarantee"] == g]
        out["by_guarantee"][g] = {
            "moves": len(rs), "done": sum(r["result"] == "done" for r in rs),
            "segments": len(ss), "sent": sum(s["sent"] for s in ss), "lost": sum(s["lost"] for s in ss),
            "duplicated": sum(s["duplicated"] for s in ss), "reordered": sum(s["reordered"] for s in ss),
            "violating_segments": sum(not s["ok"] for s in ss)}
    out["ok"] = (out["refused"] == out["failed"] == out["misplaced"] == out["empty"] == 0
                 and all(s["ok"] for s in segs))
    return out
