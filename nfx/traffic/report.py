"""One measurement: reset generator and sink, send, let the path drain, compare."""
import time

from .gen import Generator
from .sink import Sink


def settle(sink: Sink, expected: int, timeout_s: float = 0.5, poll_s: float = 0.02, quiet_s: float = 0.25) -> float:
    """Wait until the sink has `expected` packets, or its count has not moved for `quiet_s`
    (frames still in veth rings or a softirq backlog arrive after the last send; on a loaded
    machine ksoftirqd can sit on them for tens of ms, so a short lull is not the end)."""
    t0 = time.perf_counter()
    last, since = -1, t0
    while True:
        now = time.perf_counter()
        n = sink.received_total()
        if n >= expected or now - t0 >= timeout_s:
            break
        if n != last:
            last, since = n, now
        elif now - since >= quiet_s:
            break
        time.sleep(poll_s)
    return time.perf_counter() - t0


def measure(gen: Generator, sink: Sink, rate_pps: float | None, duration_s: float,
            settle_s: float = 0.5, progress=None, before_read=None) -> dict:
    """Send for `duration_s` at `rate_pps` (None: flat out) and return the generator's and the
    sink's view merged: sent, received, lost, duplicated, reordered, unexpected, out_of_window,
    exact, clean (see nfx.traffic.sink), latency, achieved pps. `before_read`, if given, runs
    between the last send and the drain: e.g. waiting for a move to end, so that packets it
    still holds when the traffic stops are judged once released, not counted lost."""
    sink.reset()
    gen.reset()
    g = gen.run(rate_pps, duration_s, progress=progress)
    if before_read is not None:
        before_read()
    waited = settle(sink, g["sent"], settle_s)
    s = sink.read(g["per_flow"])
    out = {k: v for k, v in g.items() if k != "per_flow"}
    out.update(s)
    out["settle_s"] = waited
    out["loss_ratio"] = s["lost"] / g["sent"] if g["sent"] else 0.0
    return out
