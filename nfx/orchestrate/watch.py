"""`nfx orchestrate watch`'s loop without its printing: the monitor and the analyser against a
live testbed for a while, then a summary (samples per instance, their sampling jitter, the
events, the monitor's own CPU time)."""
import statistics
import time

from .analyse import Analyser, Event
from .monitor import Lost, Monitor, Sample
from .policy import Policy


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def instance_summary(samples: list[Sample], interval_s: float) -> dict:
    """What an instance's samples add up to; jitter is |interval_s - the policy's interval| as the
    agent measured it between its reads (ms), `arrival` the same between the monitor's receipts."""
    if not samples:
        return {"samples": 0}
    pps = [s.pps for s in samples]
    cpu = [s.cpu_share for s in samples if s.cpu_share is not None]
    jit = [abs(s.interval_s - interval_s) * 1000 for s in samples[1:]] or [0.0]
    arr = [abs(b.got - a.got - interval_s) * 1000 for a, b in zip(samples, samples[1:])] or [0.0]
    last = samples[-1]
    runs = sum(s.runs for s in samples if s.runs is not None)
    return {
        "samples": len(samples),
        "pps_mean": round(statistics.fmean(pps), 1), "pps_max": round(max(pps), 1), "pps_last": round(last.pps, 1),
        "drops": sum(s.drops for s in samples),
        "flows_last": last.flows, "flows_max": max((s.flows for s in samples if s.flows is not None), default=None),
        "state_bytes_last": last.state_bytes,
        "hold_depth_max": max((s.hold_depth for s in samples if s.hold_depth is not None), default=None),
        "cpu_share_mean": round(statistics.fmean(cpu), 4) if cpu else None,
        "cpu_ns_per_pkt": round(sum(s.cpu_ns for s in samples if s.cpu_ns is not None) / runs, 1) if runs else None,
        "jitter_ms": {"p50": round(_pct(jit, 0.5), 2), "p99": round(_pct(jit, 0.99), 2), "max": round(max(jit), 2)},
        "arrival_jitter_ms": {"p50": round(_pct(arr, 0.5), 2), "p99": round(_pct(arr, 0.99), 2),
                              "max": round(max(arr), 2)},
    }


def run(testbed: str, policy: Policy, duration: float | None = None, instances: list[str] | None = None,
        on_sample=None, on_event=None, on_lost=None, stop=None) -> dict:
    """Monitor and analyse until `duration` s have passed (None: until KeyboardInterrupt, or
    until `stop()` says so). Callbacks: on_sample(Sample, Analyser), on_event(Event),
    on_lost(Lost). Returns the summary; lost instances are listed in it under `lost`."""
    mon = Monitor(testbed, policy, instances)
    mon.start()
    an = Analyser(policy, mon.instances)
    t0 = time.monotonic()
    end = t0 + duration if duration else None
    try:
        while end is None or time.monotonic() < end:
            if stop is not None and stop():
                break
            left = 0.2 if end is None else max(0.0, min(0.2, end - time.monotonic()))
            item = mon.next(timeout=left)
            if isinstance(item, Sample):
                for ev in an.feed(item):
                    if on_event:
                        on_event(ev)
                if on_sample:
                    on_sample(item, an)
            elif isinstance(item, Lost) and on_lost:
                on_lost(item)
    except KeyboardInterrupt:
        pass
    finally:
        mon.stop()
    ran = time.monotonic() - t0
    return {
        "testbed": testbed, "policy": policy.as_dict(), "seconds": round(ran, 3),
        "run_stats": mon.run_stats,
        # the whole process: in `nfx orchestrate watch` the monitor and the analyser alone
        "process_cpu_s": round(mon.cpu_s, 3), "process_cpu_share": round(mon.cpu_s / ran, 4) if ran else None,
        "instances": {n: instance_summary(list(mon.history[n]), policy.interval_s) for n in mon.instances},
        "lost": dict(mon.errors), "queued_drops": mon.queued_drops,
        **an.summary(),
    }


def event_line(ev: Event) -> str:
    """An event as people read it."""
    unit = (lambda v: f"{v:,.0f} pps") if ev.kind != "imbalance" else (lambda v: f"{v:.0%}")
    if ev.active:
        return (f"{ev.kind} raised on {ev.instance}: {unit(ev.value)} (threshold {unit(ev.threshold)}; "
                f"held since {time.strftime('%H:%M:%S', time.localtime(ev.since))}"
                f".{int(ev.since * 1000) % 1000:03d})")
    return (f"{ev.kind} cleared on {ev.instance} after {ev.cleared_at - ev.since:.2f} s "
            f"(peak {unit(ev.peak)}; clears past {unit(ev.clear_threshold)})")
