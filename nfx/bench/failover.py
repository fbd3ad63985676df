"""`nfx bench failover` (issue 14): a primary NAT killed under traffic, on netns/pair.json (nf0
primary, nf1 its secondary, nf2 a spare). The kill is what a crashed machine does to the
instance: its agent gets SIGKILL and its XDP program is detached, so nothing of it forwards or
answers. Measured, each run:

- detection: kill to the failure detection unit's verdict (heartbeats or the lease);
- recovery: the gap the sink saw, from the kill to the first packet through the new primary
  (the sink's packet count sampled every SAMPLE_S);
- packets lost (the sink's sequence numbers), NAT mappings lost (the primary's mappings read
  just before the kill, looked up in the new primary after: same inside tuple, same public
  tuple), counter drift (each moved mapping's packet counts against what the primary had: at
  most S_batch - 1 packets a flow behind);
- with iperf3, whether a TCP connection through the NAT survived the kill (no reset, every
  byte it sent arrived).
Every figure comes from the sink, the instances' maps and the controller's own report."""
import os
import signal
import threading
import time

from .. import registry
from ..loader import attach
from ..procs import agents, controller
from ..testbed import builder

SAMPLE_S = 0.0005


def kill_instance(name: str, inst: str) -> float:
    """SIGKILL the instance's agent, then detach its XDP program from every data-plane port: the
    instance is gone. Returns when (time.monotonic) the program stopped forwarding."""
    rec = registry.load(name)
    node = rec["nodes"][inst]
    pid = agents.pid_of(rec, inst)
    if pid:
        os.kill(pid, signal.SIGKILL)
    for ifname in node["ifaces"].values():
        attach.detach_xdp(node["ns"], ifname)
    t = time.monotonic()
    if pid:
        agents.wait_gone(pid)
    return t


class Timeline:
    """The sink's received count, sampled on a thread: when packets stopped and came back."""

    def __init__(self, sink, every_s: float = SAMPLE_S):
        self.sink, self.every_s = sink, every_s
        self.samples: list[tuple[float, int]] = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="timeline")

    def __enter__(self) -> "Timeline":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_ev.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop_ev.is_set():
            self.samples.append((time.monotonic(), self.sink.received_total()))
            time.sleep(self.every_s)

    def gap_after(self, t_kill: float) -> dict:
        """From the kill: the last sample before the count stopped, and the first after it moved
        again (the recovery), in ms from the kill."""
        before = [(t, n) for t, n in self.samples if t <= t_kill]
        after = [(t, n) for t, n in self.samples if t > t_kill]
        if not before or not after:
            return {"recovery_ms": None}
        n_kill = before[-1][1]
        # the count may still grow for packets already past nf0 at the kill: the stall starts
        # where it stops growing, and recovery is the first growth after that
        stalled_at = None
        for (t0, n0), (t1, n1) in zip(after, after[1:]):
            if stalled_at is None and n1 == n0:
                stalled_at = t0
            elif stalled_at is not None and n1 > n0:
                return {"recovery_ms": round((t1 - t_kill) * 1e3, 2),
                        "stalled_ms": round((stalled_at - t_kill) * 1e3, 2),
                        "gap_ms": round((t1 - stalled_at) * 1e3, 2), "in_flight": n0 - n_kill}
        return {"recovery_ms": None, "stalled_ms": round((stalled_at - t_kill) * 1e3, 2) if stalled_at else None}

    def rate(self, t_kill: float, before_s: float = 0.2, after_s: float = 0.4, bin_s: float = 0.002):
        """(ms from the kill, packets/s) in bins of bin_s: the sink's rate around the kill."""
        pts = [(t - t_kill, n) for t, n in self.samples if -before_s <= t - t_kill <= after_s]
        out, i = [], 0
        edge = -before_s
        while edge < after_s and pts:
            lo = [n for t, n in pts if t <= edge]
            hi = [n for t, n in pts if t <= edge + bin_s]
            if lo and hi:
                out.append((round((edge + bin_s / 2) * 1e3, 2), (hi[-1] - lo[-1]) / bin_s))
            edge += bin_s
            i += 1
        return out


def mappings(name: str, inst: str) -> dict[tuple, dict]:
    """The instance's NAT mappings by inside tuple."""
    return {(m["src"], m["sport"], m["dst"], m["dport"], m["proto"]): m
            for m in builder.instance(name, inst).mappings()}


def compare_mappings(before: dict, after: dict, batch: int) -> dict:
    """What the new primary holds of the old one's mappings: lost (no entry, or another public
    tuple), and how far each one's packet counts lag (drift; at most batch - 1 a flow)."""
    lost = [k for k, m in before.items() if k not in after or after[k]["public"] != m["public"]]
    drift = [max(m["pkts_out"] - after[k]["pkts_out"], 0) for k, m in before.items() if k in after]
    return {"nat_mappings": len(before), "nat_mappings_lost": len(lost),
            "drift_max": max(drift, default=0), "drift_over_batch": sum(d > batch - 1 for d in drift)}


def failover_status(name: str) -> dict:
    return controller.call(name, "GET", "/status").get("failover") or {}


def wait_failed_over(name: str, failed: str, since: float, timeout: float = 10.0) -> dict:
    """The controller's event for `failed` detected after `since` (time.time()), once it is done."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        evs = [e for e in failover_status(name).get("events", []) if e["failed"] == failed and e["at"] >= since]
        if evs and ("outcome" in evs[-1] or "error" in evs[-1]):
            return evs[-1]
        time.sleep(0.02)
    raise TimeoutError(f"no failover of {failed} within {timeout:g} s")
