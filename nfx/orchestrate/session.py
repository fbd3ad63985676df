"""A run of the loop against a scenario's traffic: the testbed's generator and sink (its rig),
the loop in a thread of its own from before the first packet to a while after the last (so
the scale-in at the end is seen), and the sink's verdict over the whole run joined to the
loop's timeline."""
import threading
import time

from .. import registry
from ..errors import BadInput
from ..testbed.drops import path_drops
from ..testbed.fault import kill_instance
from ..traffic.rig import rig
from ..traffic.sink import percentile
from . import scenario as S
from .policy import Policy
from .run import Loop


SAMPLE_S = 0.25


def sample_traffic(gen, sink, timeline, stop: threading.Event) -> None:
    """Every SAMPLE_S: what the generator sent and the sink received so far, and the p99 latency
    of the packets received since the last sample (the sink's histogram, differenced)."""
    prev = sink.histogram()
    while not stop.wait(SAMPLE_S):
        hist = sink.histogram()
        delta = [max(0, a - b) for a, b in zip(hist, prev)]
        prev = hist
        p99 = percentile(delta, 0.99)
        received = sink.received_total()        # before sent: a packet counted in it was sent
        timeline.traffic_sample(sum(gen.per_flow_total()), received, None if p99 is None else round(p99 / 1e3, 1))


def run(testbed: str, policy: Policy, name: str, flows: int = 2048, flows_per_addr: int = 16,
        low: float = 50_000, peak: float = 400_000,
        step_s: float = 1.0, hold_s: float = 4.0, tail_s: float = 6.0, after_s: float = 3.0,
        run_stats: bool = False, on_line=None, kill: str | None = None, kill_at: float | None = None,
        drain: str | None = None, drain_at: float | None = None) -> dict:
    """The timeline (Timeline.as_dict with the traffic's figures and the profile). `kill` (the
    failure scenario): the instance killed `kill_at` s into the traffic (default: halfway).
    `drain` (any scenario): the instance the loop drains, upgrades and refills from `drain_at`
    s into the traffic (default: a third of the way)."""
    on_line = on_line or (lambda msg: None)
    prof = S.profile(name, low, peak, step_s, hold_s, tail_s)
    if (name == "failure") != (kill is not None):
        raise BadInput("the failure scenario needs --kill INSTANCE, and only it takes one")
    nodes = registry.load(testbed).get("nodes", {})
    for opt, inst in (("--kill", kill), ("--drain", drain)):
        if inst is not None and nodes.get(inst, {}).get("role") != "nf":
            raise BadInput(f"{opt} {inst!r}: not an NF instance of testbed {testbed}",
                           hint=f"instances: {', '.join(n for n, i in nodes.items() if i.get('role') == 'nf')}")
    if drain is not None and drain == kill:
        raise BadInput(f"--drain and --kill name the same instance {drain}: a killed instance is not drained")
    kill_at = hold_s / 2 if kill_at is None else kill_at
    drain_at = S.duration(prof) / 3 if drain_at is None else drain_at
    for opt, inst, at in (("--kill-at", kill, kill_at), ("--drain-at", drain, drain_at)):
        if inst is not None and not 0 <= at < S.duration(prof):
            raise BadInput(f"{opt} must fall inside the traffic (0..{S.duration(prof):g} s), not {at:g}")
    loop = Loop(testbed, policy, run_stats=run_stats, on_line=on_line)
    done = threading.Event()
    box: dict = {}

    def loop_thread():
        try:
            box["timeline"] = loop.run(stop=done.is_set)
        except BaseException as e:            # noqa: BLE001 -- re-raised below, in the caller
            box["error"] = e

    # flows from consecutive inside addresses, flows_per_addr each: the loop moves them by prefix
    with rig(testbed, flows, flows_per_addr=flows_per_addr) as (gen, sink):
        drops0 = path_drops(testbed)
        t = threading.Thread(target=loop_thread, name="orchestrate-loop", daemon=True)
        t.start()
        try:
            time.sleep(min(1.0, after_s))       # the monitor's first samples before traffic
            if "error" in box:
                raise box["error"]

            def killer():
                if done.wait(kill_at):
                    return
                kill_instance(testbed, kill)
                loop.timeline.note("killed", instance=kill)
                on_line(f"killed {kill} (its agent SIGKILLed, its program detached)")

            def step(i, rate, secs):
                loop.timeline.note("step", rate=rate, seconds=secs)
                on_line(f"traffic: {rate:,.0f} pps for {secs:g} s")
                if i == 0:
                    threading.Thread(target=sample_traffic, args=(gen, sink, loop.timeline, done),
                                     name="orchestrate-traffic", daemon=True).start()
                if i == 0 and kill is not None:
                    threading.Thread(target=killer, name="orchestrate-kill", daemon=True).start()
                if i == 0 and drain is not None:
                    threading.Thread(target=drainer, name="orchestrate-drain", daemon=True).start()

            def drainer():
                if done.wait(drain_at):
                    return
                loop.timeline.note("drain-asked", instance=drain)
                loop.request_drain(drain)
            traffic = S.drive(gen, sink, prof, on_step=step, stop=lambda: "error" in box,
                              before_read=lambda: time.sleep(after_s))
        finally:
            done.set()
            t.join(180)
        # the interfaces' drops (the machine's loss, not a move's), the removed instances' too
        traffic["path_drops"] = path_drops(testbed) - drops0 + loop.removed_drops
    if "error" in box:
        raise box["error"]
    tl = loop.timeline.as_dict(traffic)
    tl["scenario"] = {"name": name, "profile": prof, "flows": flows, "flows_per_addr": flows_per_addr,
                      "low": low, "peak": peak, "kill": kill, "kill_at": kill_at if kill else None,
                      "drain": drain, "drain_at": drain_at if drain else None}
    tl["summary"]["scenario"] = name
    return tl
