"""`nfx bench failover` (issue 14): a primary NAT killed under traffic, on netns/pair.json (nf0
primary, nf1 its secondary, nf2 a spare). The kill is what a crashed machine does to the
instance: its agent gets SIGKILL and its XDP program is detached, so nothing of it forwards or
answers. Measured, each run:

- detection: kill to the failure detection unit's verdict (heartbeats or the lease);
- recovery: the gap the sink saw, from the kill to the first packet through the new primary
  (the sink's packet count sampled every SAMPLE_S);
- packets lost (the sink's sequence numbers), NAT mappings lost (the primary's mappings read
  just before the kill, looked up in the new primary after: same inside tuple, same public
  tuple), counter drift (each flow's count at the new primary against its count before the run
  plus what the sink got of it: what one instance that never failed would hold; the target is
  at most S_batch - 1 packets a flow behind);
- with iperf3, whether a TCP connection through the NAT survived the kill (no reset, every
  byte it sent arrived).
Every figure comes from the sink, the instances' maps and the controller's own report."""
import json
import os
import secrets
import signal
import statistics
import subprocess
import threading
import time
from contextlib import contextmanager

from .. import registry
from ..cluster import manage
from ..errors import NfxError
from ..loader import attach
from ..procs import agents, controller
from ..testbed import builder, topology
from ..testbed.fault import kill_instance  # noqa: F401 -- the tests call it as failover.kill_instance
from ..traffic.report import measure
from ..traffic.rig import DPORT, rig

SAMPLE_S = 0.0005


class Timeline:
    """The sink's received count, and with a generator its sent count, sampled on a thread: when
    packets stopped and came back, and how many were sent meanwhile (a generator that fell
    behind sends faster than its rate while it catches up)."""

    def __init__(self, sink, every_s: float = SAMPLE_S, gen=None):
        self.sink, self.gen, self.every_s = sink, gen, every_s
        self.samples: list[tuple[float, int]] = []
        self.sent: list[tuple[float, int]] = []
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
            t = time.monotonic()
            self.samples.append((t, self.sink.received_total()))
            if self.gen is not None:
                self.sent.append((t, self.gen.sent_total()))
            time.sleep(self.every_s)

    def sent_between(self, t0: float, t1: float) -> int | None:
        """Packets the generator sent from t0 to t1 (by the samples at or before each), or None
        without a generator's samples."""
        at0 = [n for t, n in self.sent if t <= t0]
        at1 = [n for t, n in self.sent if t <= t1]
        return at1[-1] - at0[-1] if at0 and at1 else None

    def gap_after(self, t_kill: float, t_loss: float | None = None, margin_s: float = 0.010) -> dict:
        """From the kill: the last sample before the count stopped, and the first after it moved
        again (the recovery), in ms from the kill. With a generator's samples also
        `sent_in_gap`: what it sent from `t_loss` (when packets began to be lost: the kill's
        first step; default t_kill) to `margin_s` past the recovery, the most the gap can have
        lost."""
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
                out = {"recovery_ms": round((t1 - t_kill) * 1e3, 2),
                       "stalled_ms": round((stalled_at - t_kill) * 1e3, 2),
                       "gap_ms": round((t1 - stalled_at) * 1e3, 2), "in_flight": n0 - n_kill}
                if self.sent:
                    out["sent_in_gap"] = self.sent_between(t_kill if t_loss is None else t_loss, t1 + margin_s)
                return out
        return {"recovery_ms": None, "stalled_ms": round((stalled_at - t_kill) * 1e3, 2) if stalled_at else None}

    def rate(self, t_kill: float, before_s: float = 0.2, after_s: float = 0.4, bin_s: float = 0.002):
        """(ms from the kill, packets/s) in bins of bin_s: the sink's rate around the kill."""
        pts = [(t - t_kill, n) for t, n in self.samples if -before_s <= t - t_kill <= after_s]
        out = []
        edge = -before_s
        while edge < after_s and pts:
            lo = [n for t, n in pts if t <= edge]
            hi = [n for t, n in pts if t <= edge + bin_s]
            if lo and hi:
                out.append((round((edge + bin_s / 2) * 1e3, 2), (hi[-1] - lo[-1]) / bin_s))
            edge += bin_s
        return out


def mappings(name: str, inst: str) -> dict[tuple, dict]:
    """The instance's NAT mappings by inside tuple; of an IDS, its flow entries by tuple (their
    packet count as pkts_out, no public tuple)."""
    nf = builder.instance(name, inst)
    if hasattr(nf, "mappings"):
        return {(m["src"], m["sport"], m["dst"], m["dport"], m["proto"]): m for m in nf.mappings()}
    return {(f["src"], f["sport"], f["dst"], f["dport"], f["proto"]): dict(f, public=None, pkts_out=f["pkts"])
            for f in nf.flows()}


def compare_mappings(before: dict, after: dict, batch: int, expected: dict | None = None) -> dict:
    """What the new primary holds of the old one's mappings: lost (no entry, or another public
    tuple), and how far each one's packet counts lag (drift; at most batch - 1 a flow).
    `expected`: what each mapping's pkts_out should be in `after` (e.g. its count before the
    traffic plus what the sink got of it since); without it, before's own count."""
    lost = [k for k, m in before.items() if k not in after or after[k]["public"] != m["public"]]
    want = expected if expected is not None else {k: m["pkts_out"] for k, m in before.items()}
    drift = [max(want[k] - after[k]["pkts_out"], 0) for k in before if k in after and k in want]
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


# ---- the bench: one fresh testbed a run ----

RATE = 100_000
FLOWS = 200
DURATION_S = 2.0
KILL_AT_S = 0.8
TCP_LEAD_S = 1.0          # the TCP stream starts this long before the kill
TCP_SECONDS = 3           # and ends well after recovery (2 s after the kill)
TCP_BITRATE = "20M"       # a cap: at 50M the UDP run without a kill lost 1-14k packets (2 vCPUs), at 20M 0-1.3k
TCP_PORT = 5202


def _udp(m: dict) -> bool:
    return m["proto"] == "udp" and m["dport"] == DPORT


class Iperf:
    """An iperf3 server in h2's netns (one test) and a client in h1's, through the NAT."""

    def __init__(self, name: str, seconds: int, bitrate: str, port: int = TCP_PORT):
        rec = registry.load(name)
        self.h1, self.h2 = rec["nodes"]["h1"]["ns"], rec["nodes"]["h2"]["ns"]
        self.server = rec["nodes"]["h2"]["addr"].split("/")[0]
        self.seconds, self.bitrate, self.port = seconds, bitrate, port
        self.srv = self.cli = None

    def __enter__(self) -> "Iperf":
        self.srv = subprocess.Popen(["ip", "netns", "exec", self.h2, "iperf3", "-s", "-1", "-p", str(self.port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)                                    # listening before the client connects
        return self

    def start(self) -> None:
        self.cli = subprocess.Popen(["ip", "netns", "exec", self.h1, "iperf3", "-c", self.server, "-p", str(self.port),
                                     "-t", str(self.seconds), "-b", self.bitrate, "-J"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float = 30.0) -> dict:
        """tcp_survived: iperf3 ended without an error and the server got every byte the client sent."""
        so, se = self.cli.communicate(timeout=timeout)
        try:
            j = json.loads(so)
        except ValueError:
            j = {"error": (so or se or f"iperf3 exited {self.cli.returncode}").strip()[-300:]}
        end = j.get("end") or {}
        sent = (end.get("sum_sent") or {}).get("bytes")
        recv = (end.get("sum_received") or {}).get("bytes")
        err = j.get("error")
        return {"tcp_survived": bool(self.cli.returncode == 0 and not err and sent and sent == recv),
                "tcp_bytes_sent": sent, "tcp_bytes_received": recv,
                "tcp_retransmits": (end.get("sum_sent") or {}).get("retransmits"),
                "tcp_error": err, "tcp_exit": self.cli.returncode}

    def __exit__(self, *exc) -> None:
        for p in (self.cli, self.srv):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.wait(timeout=10)


@contextmanager
def _testbed(nf: str, progress):
    name = "bf" + secrets.token_hex(3)
    progress(f"testbed {name}: netns/pair.json, 3 {nf.upper()} instances (nf0 primary, nf1 secondary, nf2 spare)")
    try:
        builder.up(name, topology.load("pair"), nf, 65536, hold_slots=256)
        yield name
    finally:
        if registry.path(name).exists():
            progress(f"testbed {name} down")
            builder.down(name)


def one(run_no: int, rate: int = RATE, flows: int = FLOWS, nf: str = "nat", batch: int = 30,
        heartbeat_ms: float = 10.0, misses: int = 3, tcp: bool = True, tcp_bitrate: str = TCP_BITRATE,
        progress=lambda m: None) -> dict:
    """One run on a fresh testbed: UDP at `rate` (and an iperf3 stream), nf0 killed KILL_AT_S into it."""
    with _testbed(nf, progress) as name, rig(name, flows) as (gen, sink):
        manage.up(name, batch=batch, heartbeat_ms=heartbeat_ms, misses=misses)
        warm = measure(gen, sink, 20_000, max(0.3, flows / 20_000 * 3), 1.0)   # every flow's mapping, shared
        if warm["lost"]:
            raise NfxError(f"{warm['lost']} of {warm['sent']} packets lost before the kill (warm-up)")
        if tcp:
            progress(f"run {run_no}: control, the same UDP and TCP traffic without a kill")
            with Iperf(name, TCP_SECONDS, tcp_bitrate) as ip:
                ip.start()
                time.sleep(max(TCP_LEAD_S - KILL_AT_S, 0))
                ctl = measure(gen, sink, rate, DURATION_S, 1.0)
                ctl_tcp = ip.result()
        else:
            ctl, ctl_tcp = measure(gen, sink, rate, DURATION_S, 1.0), {}
        time.sleep(0.3)                                    # the idle sweep shares what the traffic left
        c0 = mappings(name, "nf0")
        with Iperf(name, TCP_SECONDS, tcp_bitrate) as ip:
            res, box = {}, {}
            with Timeline(sink, gen=gen) as tl:
                t = threading.Thread(target=lambda: res.setdefault("r", measure(gen, sink, rate, DURATION_S, 1.0)))
                if tcp:
                    ip.start()
                    time.sleep(max(TCP_LEAD_S - KILL_AT_S, 0))
                t.start()
                time.sleep(KILL_AT_S)
                try:
                    box["before"] = mappings(name, "nf0")
                    since = time.time()
                    tk = kill_instance(name, "nf0", box)
                    wall_off = time.time() - time.monotonic()      # the FDU's event is stamped time.time()
                    try:
                        box["ev"] = wait_failed_over(name, "nf0", since)
                    except TimeoutError as e:       # a miss to report, not a reason to stop the bench
                        box["ev"] = {"error": str(e)}
                finally:
                    t.join()
            r = res["r"]
            tcp_r = ip.result() if tcp else {}
        rcv = {gen.sport_base + i: f.received for i, f in enumerate(sink.flows())}
        after = mappings(name, "nf1")
        ev, before = box["ev"], box["before"]
        udp_before = {k: m for k, m in before.items() if _udp(m)}
        expected = {k: c0[k]["pkts_out"] + rcv.get(k[1], 0) for k in udp_before if k in c0}
        cmp = compare_mappings(udp_before, after, batch, expected)
        tcp_before = {k: m for k, m in before.items() if m["proto"] == "tcp"}
        tcp_cmp = compare_mappings(tcp_before, after, batch)
        try:
            final0 = mappings(name, "nf0")       # what nf0 had counted when its program stopped (pins)
        except (NfxError, OSError):
            final0 = {}
        # each UDP flow's shortfall at nf1 against what nf0 counted in the end, and how far past
        # its last S_batch boundary nf0 was then (a shortfall of a whole batch or more: that
        # boundary's batch never reached nf1)
        short = sorted((expected[k] - after[k]["pkts_out"], final0[k]["pkts_out"] % batch)
                       for k in udp_before if k in after and k in final0 and k in expected)
        gap = tl.gap_after(tk, t_loss=box["sigkill"])
        # detection from the SIGKILL (the heartbeats stop there); the sink's gap, the verdict on the
        # plot and the controller's recovery from the detach (the program stops forwarding there)
        det_kill = round((ev["at"] - wall_off - box["sigkill"]) * 1e3, 2) if "at" in ev else None
        verdict = round((ev["at"] - wall_off - tk) * 1e3, 2) if "at" in ev else None
        row = {"run": run_no, "testbed": name, "rate_pps": rate, "flows": flows, "batch": batch,
               "heartbeat_ms": heartbeat_ms, "misses": misses, "by": ev.get("by"), "outcome": ev.get("outcome"),
               "error": ev.get("error"),
               "detection_ms": ev.get("silent_ms"), "detection_ms_kill_clock": det_kill,
               "record_ms": ev.get("record_ms"), "fenced_ms": ev.get("fenced_ms"),
               "promoted_ms": ev.get("promoted_ms"), "steered_ms": ev.get("steered_ms"),
               "verdict_ms_after_detach": verdict,
               "recovered_ms_kill_clock": round(verdict + ev["steered_ms"], 2) if ev.get("steered_ms") is not None and verdict is not None else None,
               "kill_window_ms": round((box["detached"] - box["sigkill"]) * 1e3, 2),
               "drift_hist": {str(d): sum(1 for x, _ in short if x == d) for d in sorted({x for x, _ in short})},
               "past_boundary_at_kill": {str(m): sum(1 for _, x in short if x == m) for m in sorted({x for _, x in short})},
               "promoted_entries": ev.get("entries"), "new_secondary": ev.get("new_secondary"),
               "recovery_ms": gap.get("recovery_ms"), "stalled_ms": gap.get("stalled_ms"), "gap_ms": gap.get("gap_ms"),
               "sent_in_gap": gap.get("sent_in_gap"),
               "sent": r["sent"], "received": r["received"], "lost": r["lost"],
               "duplicated": r["duplicated"], "reordered": r["reordered"], "sent_pps": round(r.get("pps") or 0),
               **cmp, "tcp_mappings": tcp_cmp["nat_mappings"], "tcp_mappings_lost": tcp_cmp["nat_mappings_lost"],
               **tcp_r, "lost_control": ctl["lost"], "tcp_survived_control": ctl_tcp.get("tcp_survived"),
               "tcp_retransmits_control": ctl_tcp.get("tcp_retransmits"), "rate_bins": tl.rate(tk, bin_s=0.005)}
        done = [e for e in failover_status(name).get("events", []) if e.get("failed") == "nf0"]
        if done:
            row.update(new_secondary=done[-1].get("new_secondary"), secondary_ms=done[-1].get("secondary_ms"))
        progress(f"run {run_no}: by {row['by']}, detection {row['detection_ms']} ms, recovery {row['recovery_ms']} ms, "
                 f"lost {row['lost']:,} (control {row['lost_control']:,}), mappings lost {row['nat_mappings_lost']}/{row['nat_mappings']}, "
                 f"drift max {row['drift_max']}, TCP {'survived' if row.get('tcp_survived') else 'NOT survived'}")
        manage.down(name)
        return row


def summary(rows: list[dict], batch: int) -> dict:
    rec = [x["recovery_ms"] for x in rows if x.get("recovery_ms") is not None]
    det = [x["detection_ms"] for x in rows if x.get("detection_ms") is not None]
    return {"runs": len(rows),
            "recovery_ms_median": statistics.median(rec) if rec else None, "recovery_ms_max": max(rec, default=None),
            "detection_ms_median": statistics.median(det) if det else None, "detection_ms_max": max(det, default=None),
            "recovered_all": len(rec) == len(rows),
            "recovery_under_100ms": bool(rec) and len(rec) == len(rows) and max(rec) < 100,
            "lost_median": statistics.median([x["lost"] for x in rows]) if rows else None,
            "nat_mappings_lost_total": sum(x["nat_mappings_lost"] + x.get("tcp_mappings_lost", 0) for x in rows),
            "all_mappings_kept": all(x["nat_mappings_lost"] == 0 and x.get("tcp_mappings_lost", 0) == 0 for x in rows),
            "drift_max": max((x["drift_max"] for x in rows), default=None),
            "drift_within_batch": all(x["drift_over_batch"] == 0 for x in rows),
            "drift_over_batch_runs": [x["run"] for x in rows if x["drift_over_batch"]],
            "all_tcp_survived": all(x.get("tcp_survived") for x in rows), "batch": batch}


def run(runs: int = 5, rate: int = RATE, flows: int = FLOWS, nf: str = "nat", batch: int = 30,
        heartbeat_ms: float = 10.0, misses: int = 3, tcp_bitrate: str = TCP_BITRATE, progress=lambda m: None) -> dict:
    rows = []
    for i in range(1, runs + 1):
        progress(f"run {i}/{runs}: {rate:,} pps, {flows} flows, iperf3 -b {tcp_bitrate}, kill nf0 at {KILL_AT_S:g} s")
        rows.append(one(i, rate, flows, nf, batch, heartbeat_ms, misses, True, tcp_bitrate, progress))
    return {"nf": nf, "rate_pps": rate, "flows": flows, "batch": batch, "heartbeat_ms": heartbeat_ms,
            "misses": misses, "duration_s": DURATION_S, "kill_at_s": KILL_AT_S, "tcp_bitrate": tcp_bitrate,
            "tcp_seconds": TCP_SECONDS, "rows": rows, "summary": summary(rows, batch)}
