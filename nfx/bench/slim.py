"""`nfx bench slim`: SLiM's evaluation (seeds/slim-statelets-summary.txt, Sec. 6) re-measured on
nfx's dataplane, with packet duplication (the baseline SLiM is measured against) in the same runs:
migration duration, seconds of loss, seconds of RTT over 15 ms and bytes on the wire against the
data rate (Mbit/s of frames of 512 and 1400 bytes), for the NAT and the IDS. Each run moves every
flow from the instance that has them to the other while the traffic runs; the sink judges it,
and the rig echoes every packet back through the NF so the round trip is measured (Fig. 6).

- seconds of loss: packets lost / packet rate (the paper's metric);
- seconds of RTT > 15 ms: round trips slower than 15 ms / packet rate (from the echo sink's
  latency histogram: buckets wholly above 15 ms, so at most one bucket's width short);
- bytes on the wire: snapshot, statelets (SLiM) or duplicated packets (dup), control;
- σ: the move's statelet bytes over the bytes of the packets they mirror (the NF's counters).

With `joined` (a link capacity in Mbit/s, 0 for as fast as the machine goes) the destination is
another testbed's instance: a second testbed is built and joined to the first (nfx testbed join,
its transit shaped to that capacity), lends its nf1, and the flows move between nf0 and nf1 of
the other testbed. Then everything a move sends crosses one link as between two machines: the
snapshot and statelets (SLiM) or the duplicated packets (dup), beside the traffic already there.

`scale()` is the issue's acceptance run: SLiM moves of 10,000 flows at 100k pps for each NF,
with the destination's state checked against what one instance that saw all the traffic holds.
bench/slim_plot.py draws the figures, Fig. 3's bound included."""
import threading
import time
from contextlib import contextmanager

from ..errors import BadInput, NfxError
from ..migrate import MECHANISMS
from ..procs import controller
from ..testbed import builder, join, lend
from ..testbed.drops import path_drops
from ..traffic.report import measure
from ..traffic.rig import rig
from ..traffic.sink import over
from .move_bed import testbed

RATES_MBIT = (100, 300, 500, 700, 900)
SIZES = (512, 1400)
NFS = ("nat", "ids")
FLOWS = 1000
DURATION_S, AT_S = 2.5, 0.5
RTT_LIMIT_NS = 15_000_000
CAPPED = 0.95             # a rate the generator reached less than 95% of is past the machine's limit


def _pps(mbit: float, size: int) -> int:
    return max(1, round(mbit * 1e6 / (size * 8)))


def one(name: str, gen, sink, echo, mechanism: str, src: str, dst: str, pps: int, timeout: float,
        duration: float = DURATION_S, at: float = AT_S, opts: str = "") -> tuple[dict, dict]:
    """One move of every flow under traffic: (the move's metrics, the sink's figures)."""
    out, done = {}, threading.Event()
    t = threading.Thread(target=lambda: out.setdefault("r", measure(
        gen, sink, pps, duration, 1.0, before_read=lambda: done.wait(timeout * 4), echo=echo)))
    t.start()
    time.sleep(at)
    try:
        m = controller.call(name, "POST", "/move", {"src": src, "dst": dst, "filter": "all", "guarantee": "op",
                                                    "mechanism": mechanism, "scopes": "per-flow,multi-flow",
                                                    "opts": opts, "timeout": timeout}, timeout=timeout * 4)
    except NfxError as e:
        # a move that could not finish (rolled back: the source keeps the flows) is a result too
        m = {"src": src, "dst": dst, "error": str(e)}
    finally:
        done.set()
        t.join()
    return m, out["r"]


def _released_s(m: dict) -> float | None:
    """The migration's duration: from the request until the destination had released all it held
    (the move's "released" phase). total_s adds the cleanup after it (both ends' sessions, the
    source's copy of the state deleted): 10-20 ms, the same work for either mechanism."""
    at = (m.get("phases_ms") or {}).get("released")
    return None if at is None else at / 1e3


def row(nf: str, size: int, mbit: float, mechanism: str, m: dict, r: dict, rtt_hist: list | None) -> dict:
    pps = r["pps"] or 1
    back = r.get("echo") or {}
    w = m.get("bytes_on_wire") or {}
    s = m.get("slim") or {}
    lost = r["lost"] + (back.get("lost") or 0)
    return {"mechanism": mechanism, "nf": nf, "size": size, "rate_mbit": mbit, "rate_pps": r["rate_pps"],
            "error": m.get("error"),
            "achieved_pps": round(r["pps"]), "capped": r["pps"] < CAPPED * r["rate_pps"],
            "src": m["src"], "dst": m["dst"], "flows": m.get("flows"),
            "migration_s": m.get("move_time_s"), "released_s": _released_s(m), "total_s": m.get("total_s"),
            "lost": r["lost"], "echo_lost": back.get("lost"), "duplicated": r["duplicated"],
            "reordered": r["reordered"], "seconds_of_loss": lost / pps,
            "rtt_over_15ms": over(rtt_hist, RTT_LIMIT_NS) if rtt_hist else None,
            "seconds_rtt_over_15ms": over(rtt_hist, RTT_LIMIT_NS) / pps if rtt_hist else None,
            "rtt_max_ms": (back.get("rtt_max_us") or 0) / 1e3 or None,
            "max_added_delay_ms": (m.get("max_added_delay_us") or 0) / 1e3,
            "dst_hold_peak": m.get("instance_buffer_peak"),
            "bytes_snapshot": w.get("snapshot"), "bytes_statelets": w.get("statelets"),
            "bytes_duplicated": w.get("duplicated"), "bytes_control": w.get("control"),
            "bytes_total": w.get("total"), "sigma": s.get("sigma"),
            "resyncs": s.get("resyncs"), "statelet_ring_drops": s.get("statelet_ring_drops")}


PEER_MGMT = "10.254.0.0/24"      # the joined testbed's management network


@contextmanager
def _beds(flows: int, progress, nf: str, joined: float | None):
    """(testbed, the instance nf0's flows move to): nf1 of the same testbed, or with `joined`
    nf1 of a second testbed joined to it over a link of `joined` Mbit/s."""
    with testbed(flows, progress, nf) as (name, _):
        if joined is None:
            yield name, "nf1"
            return
        with testbed(flows, progress, nf, mgmt=PEER_MGMT) as (peer, _):
            progress(f"joined over {joined:g} Mbit/s" if joined else "joined, the link unshaped")
            join.join(name, peer, joined)
            yield name, lend.lend(peer, "nf1")["as"]


def run(rates_mbit=RATES_MBIT, sizes=SIZES, nfs=NFS, mechanisms=("slim", "dup"), flows: int = FLOWS,
        timeout: float = 20.0, progress=lambda m: None, repeat: int = 1, joined: float | None = None) -> dict:
    """Every (NF, size, rate), each mechanism in turn on the same testbed and rig, moving the
    flows back and forth, `repeat` times (a move of 1,000 flows takes about 0.1 s, so one run
    alone is noisy; slim_plot reports the median). Each rate first runs with no move: a rate at
    which the machine itself loses packets (or the generator falls short) ends that size's
    sweep, as the most this machine carries. A move that does not finish within `timeout` is
    rolled back and reported as such. Returns {"rows", "baselines", "violations", "incomplete", ...}."""
    bad = [m for m in mechanisms if m not in MECHANISMS]
    if bad:
        raise BadInput(f"unknown mechanism {bad}: registered are {', '.join(MECHANISMS)}")
    if any(r <= 0 for r in rates_mbit) or any(s < 64 or s > 1514 for s in sizes) or flows < 1 or repeat < 1:
        raise BadInput("rates must be > 0 Mbit/s, sizes 64-1514 bytes, flows >= 1, repeat >= 1")
    if joined is not None and not 0 <= joined <= 100_000:
        raise BadInput(f"--joined is a link capacity of 0 (unshaped) to 100000 Mbit/s, not {joined:g}")
    rows, baselines = [], []
    total = len(nfs) * len(sizes) * len(rates_mbit) * len(mechanisms) * repeat
    n = 0
    for nf in nfs:
        with _beds(flows, progress, nf, joined) as (name, other):
            at = "nf0"                   # the flows are the same whatever the frame size
            for size in sizes:
                with rig(name, flows, size=size, echo=True) as (gen, sink, echo):
                    measure(gen, sink, 20000, 0.3, 1.0, echo=echo)    # every flow's state on `at`
                    for mbit in rates_mbit:
                        pps = _pps(mbit, size)
                        # the same traffic with no move: what the machine itself loses at this rate
                        b = measure(gen, sink, pps, DURATION_S, 1.0, echo=echo)
                        base = {"nf": nf, "size": size, "rate_mbit": mbit, "rate_pps": pps,
                                "achieved_pps": round(b["pps"]), "lost": b["lost"] + ((b.get("echo") or {}).get("lost") or 0)}
                        baselines.append(base)
                        if base["lost"] or b["pps"] < CAPPED * pps:
                            progress(f"  {nf}, {size} B at {mbit} Mbit/s: with no move the machine lost {base['lost']:,} "
                                     f"and sent {b['pps']:,.0f} pps: this rate and higher are past what it carries")
                            n += len(mechanisms) * repeat * (len(rates_mbit) - rates_mbit.index(mbit))
                            break
                        for mech in [m for _ in range(repeat) for m in mechanisms]:
                            n += 1
                            dst = other if at == "nf0" else "nf0"
                            progress(f"[{n}/{total}] {nf}, {size} B at {mbit} Mbit/s ({pps:,} pps): {mech} {at} -> {dst}")
                            drops = path_drops(name)
                            m, r = one(name, gen, sink, echo, mech, at, dst, pps, timeout)
                            rows.append(row(nf, size, mbit, mech, m, r, echo.histogram()))
                            rows[-1]["path_drops"] = path_drops(name) - drops
                            if not m.get("error"):
                                at = dst
                            else:
                                progress(f"  did not complete: {m['error']}")
    violations = [r for r in rows if r["lost"] or r["duplicated"] or r["reordered"] or r.get("echo_lost")]
    incomplete = [r for r in rows if r["error"]]
    return {"rows": rows, "baselines": baselines, "violations": violations, "incomplete": incomplete,
            "flows": flows, "repeat": repeat, "duration_s": DURATION_S, "joined_mbit": joined,
            "rtt_limit_ms": RTT_LIMIT_NS / 1e6}


SCALE_FLOWS, SCALE_PPS = 10_000, 100_000


def _single_instance_check(name: str, nf: str, inst: str, per_flow_sent: int, flows: int) -> dict:
    """Does `inst` hold what one instance that saw all the traffic would: every flow's packet
    count (the generator goes round the flows, one packet each), and for the IDS the host's?"""
    i = builder.instance(name, inst)
    if nf == "nat":
        got = [m["pkts_out"] for m in i.mappings() if m["dport"] == 9000]
    else:
        got = [f["pkts"] for f in i.flows() if f["dport"] == 9000]
    out = {"flows_found": len(got), "flows_equal": sum(1 for g in got if g == per_flow_sent)}
    if nf == "ids":
        out["host_pkts"] = sum(h["pkts"] for h in i.hosts())
        out["host_pkts_expected"] = per_flow_sent * flows
    out["equal"] = out["flows_found"] == flows == out["flows_equal"] and \
        out.get("host_pkts") == out.get("host_pkts_expected")
    return out


def scale(nfs=NFS, flows: int = SCALE_FLOWS, pps: int = SCALE_PPS, duration: float = 3.0, timeout: float = 60.0,
          variants=("", "rt"), repeat: int = 3, progress=lambda m: None) -> dict:
    """The issue's acceptance: SLiM moves of `flows` flows at `pps` for each NF (as published, and
    with nfx's rt), back and forth `repeat` times each: 0 lost, the destination's state equal to
    a single instance's, and the most any packet was held (the issue allows 5 ms)."""
    rows = []
    for nf in nfs:
        with testbed(flows, progress, nf) as (name, _):
            with rig(name, flows) as (gen, sink):
                warm = measure(gen, sink, min(200_000, flows * 20), 0.5, 1.0)
                if warm["lost"] or warm["sent"] % flows:
                    raise NfxError(f"the warm-up lost {warm['lost']} packets or did not go round the flows evenly")
                seen, at = warm["sent"] // flows, "nf0"
                for rep in range(repeat):
                    # each variant moves both ways over the runs (the instances need not be alike)
                    for opts in (variants if rep % 2 == 0 else tuple(reversed(variants))):
                        dst = "nf1" if at == "nf0" else "nf0"
                        progress(f"{nf}: SLiM{'+' + opts if opts else ''} move of {flows:,} flows at {pps:,} pps, "
                                 f"{at} -> {dst} ({rep + 1}/{repeat})")
                        m, r = one(name, gen, sink, None, "slim", at, dst, pps, timeout, duration, duration / 3, opts)
                        if r["sent"] % flows:
                            raise NfxError(f"{r['sent']} packets do not go round {flows} flows evenly: pick a rate and "
                                           "duration whose product is a multiple of the flow count")
                        seen += r["sent"] // flows
                        if m.get("error"):
                            rows.append({"nf": nf, "variant": opts or "published", "error": m["error"], "ok": False})
                            continue
                        check = _single_instance_check(name, nf, dst, seen, flows)
                        held_ms = m["max_added_delay_us"] / 1e3
                        rows.append({"nf": nf, "variant": opts or "published", "src": at, "dst": dst, "flows": flows,
                                     "rate_pps": pps, "achieved_pps": round(r["pps"]), "sent": r["sent"],
                                     "lost": r["lost"], "duplicated": r["duplicated"], "reordered": r["reordered"],
                                     "migration_s": m["move_time_s"], "max_added_delay_ms": held_ms,
                                     "dst_hold_peak": m["instance_buffer_peak"], "sigma": m["slim"]["sigma"],
                                     "resyncs": m["slim"]["resyncs"], "state": check,
                                     "clean": not (r["lost"] or r["duplicated"] or r["reordered"]) and check["equal"],
                                     "within_5ms": held_ms <= 5.0})
                        at = dst
    for r in rows:
        r.setdefault("ok", r.get("clean", False) and r.get("within_5ms", False))
    return {"rows": rows, "clean": all(r.get("clean") for r in rows), "ok": all(r["ok"] for r in rows)}
