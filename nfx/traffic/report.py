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
            settle_s: float = 0.5, progress=None, before_read=None, echo: Sink | None = None) -> dict:
    """Send for `duration_s` at `rate_pps` (None: flat out) and return the generator's and the
    sink's view merged: sent, received, lost, duplicated, reordered, unexpected, out_of_window,
    exact, clean (see nfx.traffic.sink), latency, achieved pps. `before_read`, if given, runs
    between the last send and the drain: e.g. waiting for a move to end, so that packets it
    still holds when the traffic stops are judged once released, not counted lost.
    `echo`: the sender's sink of an echoing rig (nfx.traffic.rig); adds out["echo"] (echo_figures)."""
    sink.reset()
    if echo is not None:
        echo.reset()
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
    if echo is not None:
        out.pop("echoed", None)
        reflected = sink.echoed_total()
        waited = settle(echo, reflected, settle_s)
        out["echo"] = echo_figures(s, echo.read(g["per_flow"]), reflected, waited)
    return out


def echo_figures(fwd: dict, back: dict, reflected: int, settle_s: float) -> dict:
    """The return path's view. The echo sink judges each flow against what the generator sent,
    so its loss is the round trip's; a packet lost on the way out cannot come back, so the
    return path lost exactly round-trip lost - forward lost (exact when both reads are).
    Duplicates and reordering are counted at h1, over the round trip: a packet duplicated or
    reordered on the way out is echoed as such and counted again."""
    return {"reflected": reflected, "received": back["received"], "lost": back["lost"] - fwd["lost"],
            "lost_round_trip": back["lost"], "duplicated": back["duplicated"], "reordered": back["reordered"],
            "unexpected": back["unexpected"], "out_of_window": back["out_of_window"],
            "exact": back["exact"] and fwd["exact"], "clean": back["clean"] and fwd["clean"],
            "rtt_p50_us": back["lat_p50_us"], "rtt_p99_us": back["lat_p99_us"],
            "rtt_max_us": back["lat_max_us"], "settle_s": settle_s}
