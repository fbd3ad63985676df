"""`nfx bench sharp`: SHarP's evaluation (seeds/sharp-handover.txt, Sec. IV-B) re-measured on
nfx's dataplane, with OpenNF (loss-free and order-preserving) in the same runs:

- Fig. 5: the metrics against the moved flow's packet rate (one UDP flow, 1000-byte packets);
- Fig. 7: against an added state-transfer duration, 100 ms to 1 s (1000 pps). As in the paper
  it is emulated: the sources wait that long before their push (SHarP), the controller before
  it takes the state (OpenNF).

Each point runs `repeat` times; a run hands the flow from the instance that has it to the
other one while the traffic runs, and the sink judges it. The figures, per run: handover
duration, maximum added delay (the RTT's, when the rig echoes; else the longest a packet was
held), controller buffer peak, instance buffer peak (SHarP: ctrl_buff and sw_buff), lost,
reordered, duplicated. bench/sharp_plot.py draws them."""
import threading
import time

from ..errors import BadInput, NfxError
from ..procs import controller
from ..testbed import builder
from ..traffic.report import measure
from ..traffic.rig import rig
from .ci import mean_ci
from .move_bed import testbed, traffic_rig

DEFAULT_RATES = (1000, 2000, 5000, 10000, 20000)
DEFAULT_DELAYS_MS = (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)
SIZE = 1000                   # bytes per packet, the paper's
DURATION_S, AT_S = 2.0, 0.6   # traffic per run; the handover starts this far into it
FIG7_RATE = 1000
METRICS = ("handover_s", "max_delay_ms", "controller_buffer_peak", "instance_buffer_peak", "lost", "reordered",
           "duplicated")


def _owner(name: str) -> str:
    held = [i for i in ("nf0", "nf1") if len(builder.instance(name, i).maps["nat_fwd"])]
    if len(held) != 1:
        raise NfxError(f"the flow's state is on {held or 'no instance'}: expected exactly one")
    return held[0]


def one(name: str, gen, sink, echo, mechanism: str, rate: int, state_delay_ms: float, timeout: float) -> dict:
    """One handover (or OpenNF move) of the flow under traffic; the row of figures."""
    src = _owner(name)
    dst = "nf1" if src == "nf0" else "nf0"
    out, done = {}, threading.Event()
    t = threading.Thread(target=lambda: out.setdefault("r", measure(gen, sink, rate, DURATION_S, 1.0,
                                                                    before_read=lambda: done.wait(timeout * 4),
                                                                    echo=echo)))
    t.start()
    time.sleep(AT_S)
    try:
        if mechanism == "sharp":
            m = controller.call(name, "POST", "/handover", {"filter": "all", "dst": dst, "priority": 1,
                                                            "state_delay_ms": state_delay_ms, "timeout": timeout},
                                timeout=timeout * 4)
        else:
            m = controller.call(name, "POST", "/move", {"src": src, "dst": dst, "filter": "all", "guarantee": "op",
                                                        "mechanism": "opennf", "state_delay_ms": state_delay_ms,
                                                        "timeout": timeout}, timeout=timeout * 4)
    finally:
        done.set()
        t.join()
    r = out["r"]
    back = r.get("echo") or {}
    ib = m.get("instance_buffer_peak")
    row = {"mechanism": mechanism, "rate_pps": rate, "state_delay_ms": state_delay_ms, "src": src, "dst": dst,
           "handover_s": m.get("handover_s") if mechanism == "sharp" else m.get("total_s"),
           "max_delay_ms": (back["rtt_max_us"] / 1e3) if back.get("rtt_max_us") else m.get("max_added_delay_us", 0) / 1e3,
           "delay_source": "rtt" if back.get("rtt_max_us") else "held",
           "controller_buffer_peak": m.get("controller_buffer_peak"),
           "instance_buffer_peak": ib["both"] if isinstance(ib, dict) else ib,
           "ctrl_buff_peak": ib.get("ctrl_buff") if isinstance(ib, dict) else None,
           "sw_buff_peak": ib.get("sw_buff") if isinstance(ib, dict) else None,
           "lost": r["lost"], "reordered": r["reordered"], "duplicated": r["duplicated"], "sent": r["sent"]}
    if back:
        row.update(echo_lost=back.get("lost"), echo_reordered=back.get("reordered"),
                   rtt_p50_ms=(back.get("rtt_p50_us") or 0) / 1e3)
    return row


def run(rates=DEFAULT_RATES, delays_ms=DEFAULT_DELAYS_MS, repeat: int = 3, mechanisms=("sharp", "opennf"),
        timeout: float = 30.0, progress=lambda m: None) -> dict:
    """Both figures' points, `repeat` runs each, on a testbed of its own. Returns
    {"rows": [...], "summary": [...], "violations": [...]}."""
    if repeat < 1:
        raise BadInput("--repeat must be at least 1")
    if any(r <= 0 for r in rates) or any(d < 0 for d in delays_ms):
        raise BadInput("rates must be > 0 and delays >= 0")
    plan = ([("fig5", r, 0.0) for r in rates] + [("fig7", FIG7_RATE, float(d)) for d in delays_ms])
    rows = []
    with testbed(1, progress) as (name, _):
        with rig(name, 1, size=SIZE, echo=True) as (gen, sink, echo):
            measure(gen, sink, 1000, 0.2, 1.0, echo=echo)     # the flow's state on nf0
            total = len(plan) * repeat * len(mechanisms)
            n = 0
            for fig, rate, delay in plan:
                for rep in range(repeat):
                    for mech in mechanisms:
                        n += 1
                        progress(f"[{n}/{total}] {fig}: {mech} at {rate} pps, +{delay:g} ms state transfer")
                        row = one(name, gen, sink, echo, mech, rate, delay, timeout)
                        row.update(fig=fig, rep=rep)
                        rows.append(row)
    bad = [r for r in rows if r["lost"] or r["reordered"] or r["duplicated"] or r.get("echo_lost")
           or r.get("echo_reordered")]
    return {"rows": rows, "summary": summarize(rows), "violations": bad,
            "packet_size": SIZE, "repeat": repeat}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and 95% CI of each metric per (figure, mechanism, point)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["fig"], r["mechanism"], r["rate_pps"], r["state_delay_ms"]), []).append(r)
    out = []
    for (fig, mech, rate, delay), rs in sorted(groups.items()):
        s = {"fig": fig, "mechanism": mech, "rate_pps": rate, "state_delay_ms": delay, "runs": len(rs)}
        for k in METRICS + ("ctrl_buff_peak", "sw_buff_peak"):
            s[k], s[k + "_ci"] = mean_ci([r.get(k) for r in rs])
        out.append(s)
    return out


MATRIX_FLOWS = (1, 1000, 10000)
MATRIX_RATES = (10000, 100000)
MATRIX_NFS = ("nat", "ids")


def matrix(flows=MATRIX_FLOWS, rates=MATRIX_RATES, nfs=MATRIX_NFS, duration: float = 2.0, timeout: float = 60.0,
           progress=lambda m: None) -> dict:
    """The issue's grid: handovers of every flow count at every rate, for each NF, under traffic
    that the sink judges after the handover has ended. One row per cell."""
    rows = []
    for nf in nfs:
        with testbed(max(flows), progress, nf) as (name, _):
            at = "nf0"
            for n in flows:
                with (traffic_rig(name, n) if nf == "nat" else rig(name, n)) as (gen, sink):
                    measure(gen, sink, min(200_000, max(1000, n * 20)), 0.3, 1.0)   # every flow has its state on `at`
                    for rate in rates:
                        dst = "nf1" if at == "nf0" else "nf0"
                        progress(f"{nf}: {n:,} flows at {rate:,} pps, {at} -> {dst}")
                        out, done = {}, threading.Event()
                        t = threading.Thread(target=lambda: out.setdefault("r", measure(
                            gen, sink, rate, duration, 1.0, before_read=lambda: done.wait(timeout * 4))))
                        t.start()
                        time.sleep(duration / 3)
                        try:
                            m = controller.call(name, "POST", "/handover", {"filter": "all", "dst": dst, "priority": 1,
                                                                            "timeout": timeout}, timeout=timeout * 4)
                        finally:
                            done.set()
                            t.join()
                        r = out["r"]
                        ib = m["instance_buffer_peak"]
                        rows.append({"nf": nf, "flows": n, "rate_pps": rate, "src": at, "dst": dst,
                                     "sent": r["sent"], "lost": r["lost"], "duplicated": r["duplicated"],
                                     "reordered": r["reordered"], "unexpected": r["unexpected"],
                                     "learnt": m["flows"], "handover_s": m["handover_s"],
                                     "controller_buffer_peak": m["controller_buffer_peak"],
                                     "ctrl_buff_peak": ib["ctrl_buff"], "sw_buff_peak": ib["sw_buff"],
                                     "max_added_delay_ms": m["max_added_delay_us"] / 1e3,
                                     "release_ring_waits": m.get("release_ring_waits")})
                        at = dst
    bad = [r for r in rows if r["lost"] or r["duplicated"] or r["reordered"] or r["unexpected"]]
    return {"rows": rows, "violations": bad, "duration_s": duration}
