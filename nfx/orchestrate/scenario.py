"""The built-in scenarios `nfx orchestrate run` drives the traffic through: a rate profile, a
list of (pps, seconds) steps the generator sends one after the other, with the sink judging
the whole run at the end (lost, duplicated, reordered over every step and every move).

    ramp    low, up in steps to peak, held, down in steps to low, held (the scale-in's time)
    flash   low, then peak at once (a flash crowd), held, then low again
    steady  peak for the whole time
    failure steady, and an instance killed halfway (its agent SIGKILLed, its program detached)
"""
from ..errors import BadInput
from ..traffic.report import settle

NAMES = ("ramp", "flash", "steady", "failure")


def profile(name: str, low: float = 50_000, peak: float = 400_000, step_s: float = 1.0,
            hold_s: float = 4.0, tail_s: float = 6.0, steps: int = 7) -> list[tuple[float, float]]:
    if name not in NAMES:
        raise BadInput(f"unknown scenario {name!r}", hint=f"one of {', '.join(NAMES)}")
    if not 0 < low <= peak:
        raise BadInput(f"rates must be 0 < low ({low:g}) <= peak ({peak:g})")
    if min(step_s, hold_s, tail_s) <= 0 or steps < 1:
        raise BadInput("step, hold and tail times must be positive, steps at least 1")
    if name in ("steady", "failure"):
        return [(peak, hold_s)]
    if name == "flash":
        return [(low, tail_s / 2), (peak, hold_s), (low, tail_s)]
    up = [low + (peak - low) * i / steps for i in range(1, steps)]
    return [(low, step_s * 2)] + [(r, step_s) for r in up] + [(peak, hold_s)] + \
        [(r, step_s) for r in reversed(up)] + [(low, tail_s)]


def duration(prof: list[tuple[float, float]]) -> float:
    return sum(s for _, s in prof)


# a step the generator falls behind (a stall, or more than the machine carries) takes longer
# rather than catching up in a burst the path drops: at most this much of its schedule is owed
MAX_LAG_S = 0.005


def drive(gen, sink, prof: list[tuple[float, float]], on_step=None, stop=None, settle_s: float = 1.0,
          before_read=None) -> dict:
    """Send the profile from a reset generator and sink, then let the sink settle and judge the
    whole run (nfx.traffic.report.measure's figures over every step). `before_read` runs
    between the last step and the read (e.g. the loop's last actions finishing)."""
    sink.reset()
    gen.reset()
    steps = []
    for i, (rate, secs) in enumerate(prof):
        if stop is not None and stop():
            break
        if on_step is not None:
            on_step(i, rate, secs)
        g = gen.run(rate, secs, max_lag_s=MAX_LAG_S)
        steps.append({"rate": rate, "seconds": secs, "sent": g["sent"], "pps": round(g["pps"], 1),
                      "elapsed_s": round(g["elapsed_s"], 3)})
    if before_read is not None:
        before_read()
    per_flow = gen.per_flow_total()
    sent = sum(per_flow)
    waited = settle(sink, sent, settle_s)
    out = {"sent": sent, "steps": steps, "settle_s": waited}
    out.update(sink.read(per_flow))
    return out
