"""SHarP, the seamless handover protocol (seeds/sharp-handover.txt, Sec. III), the controller's
side; its instances' side is the handover support layer (nfx/agent/hsl.py), its switches are a
control.sharp_plane.Plane handed in. One Handover runs one request in the paper's three phases:

1. Flow detection. The switches get a detection entry (prio 2r+1: the filter -> controller) and
   a forward entry (2r+0: -> destination). The controller holds what detection sends it, learns
   each flow and points an exact entry for it at the controller. When detection has been idle
   for the maximum silence on every switch, START_HO goes to the sources and the destination as
   packet-outs on the switch ports in front of them, and each answers ACK in band.
2. The exact entries go to the destination with a copy to the controller (BUFFER_FOLLOW_UP), the
   detection entries go, and the controller sends what it held, tagged, toward the destination
   (packet-outs on the destination's port: ctrl_buff there; what the switch sends is sw_buff).
   A test packet from each switch's host side marks the end of what can still reach the
   controller: once it is seen, the copies stop and END follows the last tagged packet. The
   sources push their state to the destination meanwhile (started by START_HO).
3. With END on every side and the state in from every source, the destination releases
   ctrl_buff, then sw_buff, and says DONE. The exact entries go; the forward entry is the final
   forwarding (the caller turns it into a move-band rule when no handover of lower priority
   overlaps it any more: nfx/control/handover.py).

One deviation from the paper, for the NFs nfx runs: START_HO is sent before the detection entry
is removed, not after. Flows not seen during detection still go straight to the destination as
new flows (2r+0), but the destination's gate then already buffers them until the state is in: a
NAT would otherwise map a flow of the source afresh, and an IDS count it from zero."""
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .. import layout as L
from ..errors import BadInput, NfxError
from ..filter import Filter
from ..frames import frame_key, tagged
from ..state.tables import SCOPES


@dataclass
class HandoverRequest:
    filter: Filter
    priority: int
    dst: str
    scopes: tuple = SCOPES
    max_silence_s: float = 0.01      # the detection entry's idle timeout
    timeout: float = 30.0
    state_delay_s: float = 0.0       # emulated: the sources wait this long before pushing (Fig. 7)

    def check(self, instances: list[str]) -> None:
        if self.dst not in instances:
            raise BadInput(f"unknown destination instance {self.dst!r}: instances are {', '.join(instances)}")
        if not 0 < self.max_silence_s <= 10:
            raise BadInput("max silence must be in (0, 10] seconds")
        if not 0 <= self.state_delay_s <= 60:
            raise BadInput("the added state-transfer delay must be in [0, 60] seconds")
        if not 0 < self.timeout <= 600:
            raise BadInput("timeout must be in (0, 600] seconds")


@dataclass
class _Switch:
    detect: int = 0                  # wildcard rule ids
    forward: int = 0
    to_ctrl: int = 0                 # shared rules the learnt flows' exact entries point at
    follow: int = 0
    keys: list = field(default_factory=list)
    seen: set = field(default_factory=set)
    exact_rule: int = 0              # where a newly learnt flow's entry points now
    detect_since_ns: int = 0
    test_sent: bool = False
    ended: bool = False


TEST = object()                      # in the held queue: the switch's test packet came here


class Handover:
    def __init__(self, req: HandoverRequest, plane, srcs: list[str], epoch: int, progress=lambda m: None,
                 outside: list | None = None):
        """outside: for a partial filter on a NAT, the public tuples of its flows (the sources
        know them): the switch on the outside side matches those, exactly, from the start,
        since the filter reversed would not match a translated packet."""
        self.req, self.plane, self.srcs, self.epoch = req, plane, list(srcs), epoch
        self.outside = outside
        self.progress = progress
        self.sw = {name: _Switch() for name in plane.switches}
        self.sides = sorted({plane.side(n) for n in plane.switches})
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        self.held: deque = deque()     # (switch, frame, received ns) or (switch, TEST, 0), ring order
        self.phase_no = 1
        self.acks: dict[str, dict] = {}
        self.dones: dict[str, dict] = {}
        self.t0 = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.n = {"to_controller": 0, "follow_ups": 0, "packet_outs": 0, "rule_changes": 0, "hsl_out": 0,
                  "hsl_in": 0, "held": 0}
        self.peak = 0
        self.holding = 0                 # packets in `held` (not counting test markers)
        self.max_hold_ns = 0

    def phase(self, name: str) -> None:
        self.phases[name] = round((time.perf_counter() - self.t0) * 1e3, 2)

    # ---- what the ring brings (the plane's reader thread) ----
    def on_packet(self, sw: str, rid: int, frame: bytes) -> None:
        s = self.sw[sw]
        with self.cv:
            self.n["to_controller"] += 1
            if rid == s.follow:
                self.n["follow_ups"] += 1        # its original went on to the destination
                return
            k = frame_key(frame)
            if k is not None and bytes(k) not in s.seen:
                s.seen.add(bytes(k))
                s.keys.append(k)
                self.plane.point_exact(sw, [k], s.exact_rule)
                self.n["rule_changes"] += 1
            self.held.append((sw, frame, time.monotonic_ns()))
            self.n["held"] += 1
            self.holding += 1
            self.peak = max(self.peak, self.holding)
            self.cv.notify_all()

    def on_message(self, sw: str, kind: int, epoch: int, side: int, body: dict) -> None:
        with self.cv:
            self.n["hsl_in"] += 1
            who = body.get("instance", "?")
            if kind == L.HslKind.ACK:
                self.acks[who] = body
            elif kind == L.HslKind.DONE:
                self.dones[who] = body
            elif kind == L.HslKind.TEST:
                self.held.append((sw, TEST, 0))
            self.cv.notify_all()

    def _wait(self, cond, what: str) -> None:
        with self.cv:
            if not self.cv.wait_for(cond, self.req.timeout):
                raise TimeoutError(f"timed out after {self.req.timeout:g} s waiting for {what}")

    # ---- the protocol ----
    def run(self) -> dict:
        """The three phases; returns the handover's figures. On failure everything it changed
        on the switches is undone and what the controller still held goes back to the source
        (rollback), then the error is raised."""
        plane = self.plane
        plane.listen(self.epoch, self)
        try:
            self._detect()
            self._start()
            self._hand_over()
            self._finish()
        except BaseException as e:
            self.progress(f"rolling back: {e}")
            self._rollback()
            raise NfxError(f"handover {self.epoch} ({self.req.filter.text} -> {self.req.dst}) rolled back: {e}") from e
        finally:
            plane.forget(self.epoch)
        return self.metrics()

    def _detect(self) -> None:
        req, plane = self.req, self.plane
        self.progress("phase 1: detecting the flows")
        for name, s in self.sw.items():
            s.to_ctrl = plane.shared_to_ctrl(name)
            s.follow = plane.shared_follow(name, req.dst)
            s.exact_rule = s.to_ctrl
            plane.own(name, s.to_ctrl, self)
            plane.own(name, s.follow, self)
            if self.outside is not None and plane.side(name) != L.SIDE_IN:
                # a NAT's return traffic by its public tuples: known, so not detected
                s.keys = list(self.outside)
                s.seen = {bytes(k) for k in s.keys}
                plane.point_exact(name, s.keys, s.to_ctrl)
                self.n["rule_changes"] += 1
                continue
            # detection first: with the forward entry alone for a moment, a packet would pass by
            s.detect = plane.add_detection(name, req.filter, req.priority, self)
            s.detect_since_ns = time.monotonic_ns()
            s.forward = plane.add_forward(name, req.filter, req.priority, req.dst, self)   # in flux until it ends
            self.n["rule_changes"] += 2
        self.phase("detecting")
        silence = int(req.max_silence_s * 1e9)
        t_end = time.monotonic() + req.timeout
        while True:
            now = time.monotonic_ns()
            idle = [not s.detect or now - max(plane.last_hit_ns(n, s.detect) or 0, s.detect_since_ns) >= silence
                    for n, s in self.sw.items()]
            if all(idle):
                break
            if time.monotonic() > t_end:
                raise TimeoutError(f"detection never went quiet for {req.max_silence_s:g} s within {req.timeout:g} s")
            time.sleep(min(0.001, req.max_silence_s / 10))
        self.phase("detected")

    def _start(self) -> None:
        """START_HO to every source and the destination, on every side; their ACKs."""
        req, plane = self.req, self.plane
        self.progress("START_HO to the instances")
        common = {"filter": req.filter.text, "sides": self.sides, "timeout": req.timeout}
        for name in self.sw:
            for src in self.srcs:
                plane.message(name, src, L.HslKind.START, self.epoch,
                              {**common, "role": "src", "dst": req.dst, "scopes": list(req.scopes),
                               "state_delay_s": req.state_delay_s})
            plane.message(name, req.dst, L.HslKind.START, self.epoch, {**common, "role": "dst", "srcs": self.srcs})
            self.n["hsl_out"] += len(self.srcs) + 1
        everyone = set(self.srcs) | {req.dst}
        self._wait(lambda: everyone <= set(self.acks), f"ACKs from {', '.join(sorted(everyone))}")
        bad = {k: v for k, v in self.acks.items() if not v.get("ok")}
        if bad:
            raise NfxError("; ".join(f"{k} refused START_HO: {v.get('error')}" for k, v in bad.items()))
        self.phase("acked")

    def _hand_over(self) -> None:
        """Phase 2: the learnt flows to the destination (copies up), detection off, the held
        packets out tagged, the test packet; per switch, END after its last tagged packet."""
        req, plane = self.req, self.plane
        self.progress("phase 2: the flows to the destination, the controller's buffer after them")
        with self.cv:
            self.phase_no = 2
            for name, s in self.sw.items():
                s.exact_rule = s.follow
                plane.point_exact(name, s.keys, s.follow)
                self.n["rule_changes"] += 1
        for name, s in self.sw.items():
            if s.detect:
                plane.remove(name, s.detect)
                s.detect = 0
                self.n["rule_changes"] += 1
        self.phase("redirected")
        for name, s in self.sw.items():
            plane.test_packet(name, self.epoch)
            s.test_sent = True
            self.n["packet_outs"] += 1
        t_end = time.monotonic() + req.timeout
        while not all(s.ended for s in self.sw.values()):
            with self.cv:
                if not self.held and not self.cv.wait_for(lambda: self.held, max(0.0, t_end - time.monotonic())):
                    raise TimeoutError(f"the test packet did not come back within {req.timeout:g} s")
                item = self.held.popleft()
            name, frame, at = item
            if frame is TEST:
                s = self.sw[name]
                plane.test_seen(name, self.epoch)
                plane.stop_copies(name, s.follow, req.dst)
                plane.message(name, req.dst, L.HslKind.END, self.epoch, {"held": self.n["held"]})
                self.n["rule_changes"] += 1
                self.n["hsl_out"] += 1
                s.ended = True
                continue
            plane.packet_out(name, req.dst, [tagged(frame)])
            with self.cv:
                self.holding -= 1
            self.n["packet_outs"] += 1
            self.max_hold_ns = max(self.max_hold_ns, time.monotonic_ns() - at)
        self.phase("ctrl_empty")

    def _finish(self) -> None:
        """Phase 3 is the destination's: wait for its DONE (and the sources'), then the exact
        entries and shared rules go; the forward entries stay as the final forwarding."""
        req, plane = self.req, self.plane
        self.progress("phase 3: the destination releases ctrl_buff, then sw_buff")
        everyone = set(self.srcs) | {req.dst}
        self._wait(lambda: everyone <= set(self.dones) or any(not d.get("ok") for d in self.dones.values()),
                   f"DONE from {', '.join(sorted(everyone))}")
        bad = {k: v for k, v in self.dones.items() if not v.get("ok")}
        if bad:
            raise NfxError("; ".join(f"{k}: {v.get('error')}" for k, v in bad.items()))
        self.phase("released")
        for name, s in self.sw.items():
            plane.remove(name, s.to_ctrl)
            if not s.forward:
                # the public tuples keep their entries (to dst) until the final forwarding
                # replaces them one by one (control/handover.py)
                continue
            plane.unpoint_exact(name, s.keys)
            plane.remove(name, s.follow)
            self.n["rule_changes"] += 1
        self.phase("final")

    def forward_entries(self) -> list[tuple[str, int]]:
        """What stays after the handover as its forwarding: (switch, rule id) of the wildcard
        forward entries and of the shared rule the public tuples point at."""
        return [(n, s.forward or s.follow) for n, s in self.sw.items()]

    def _rollback(self) -> None:
        """Back to the sources: the handover's entries go, and what the controller still holds
        goes to the flow's source, untagged, in order (a source keeps its state until its push
        is through). What the destination held is gone if it is."""
        plane = self.plane
        with self.cv:
            self.phase_no = 0
            held, self.held = list(self.held), deque()
        for name, s in self.sw.items():
            for rid in (s.detect, s.forward):
                if rid:
                    plane.remove(name, rid)
            s.detect = s.forward = 0
            try:
                plane.unpoint_exact(name, s.keys)
            except Exception:
                pass
            for rid in (s.to_ctrl, s.follow):
                if rid:
                    plane.remove(name, rid)
            if s.test_sent:
                plane.test_seen(name, self.epoch)
        for name, frame, _ in held:
            if frame is TEST:
                continue
            to = self.srcs[0] if len(self.srcs) == 1 else plane.owner(name, frame)
            if to:
                plane.packet_out(name, to, [frame])

    # ---- the figures ----
    def metrics(self) -> dict:
        d = self.dones.get(self.req.dst, {})
        st = d.get("stats") or {}
        src = [self.dones.get(s, {}) for s in self.srcs]
        chunks = sum(x.get("chunks", 0) for x in src)
        return {
            "mechanism": "sharp", "epoch": self.epoch, "filter": self.req.filter.text,
            "priority": self.req.priority, "srcs": self.srcs, "dst": self.req.dst,
            "scopes": list(self.req.scopes), "max_silence_ms": self.req.max_silence_s * 1e3,
            "state_delay_ms": self.req.state_delay_s * 1e3,
            "flows": sum(len(s.keys) for s in self.sw.values()),
            "handover_s": self.phases.get("final", 0.0) / 1e3, "phases_ms": self.phases,
            "controller_buffer_peak": self.peak, "controller_packets": self.n["held"],
            "instance_buffer_peak": {"ctrl_buff": st.get("ctrl_buff_peak", 0), "sw_buff": st.get("sw_buff_peak", 0),
                                     "both": st.get("buffer_peak", 0)},
            "instance_buffered": st.get("buffered", 0),
            "max_added_delay_us": max(st.get("max_hold_us", 0.0), self.max_hold_ns / 1e3),
            "release_ring_waits": {"calls": st.get("ring_waits", 0), "ms": st.get("ring_wait_ms", 0.0)},
            "state_chunks": chunks, "state_bytes": sum(x.get("bytes", 0) for x in src),
            "transfer_s": max((x.get("transfer_s", 0.0) for x in src), default=0.0),
            # the paper's counts: 2T + C on the control channel, V + 2R + C on the data plane
            "messages": {
                "control": {"to_controller": self.n["to_controller"], "follow_ups": self.n["follow_ups"],
                            "packet_outs": self.n["packet_outs"],
                            "rule_changes": self.n["rule_changes"], "hsl_in": self.n["hsl_in"],
                            "hsl_out": self.n["hsl_out"]},
                "data_plane": {"state_chunks": chunks, "redirected": st.get("buffered", 0)}},
        }
