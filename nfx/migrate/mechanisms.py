"""Move(src, dst, filter, scope, guarantee, optimisations, mechanism), after OpenNF and DiST
(seeds/dist-distributed-state-transfer.txt), on nfx's dataplane.

- opennf: state goes src → controller → dst; packets arriving at src during the move go to the
  controller (TO_CTRL) and are handed to dst once their state is there.
- dist: state goes src → dst directly; packets arriving at src are redirected to dst over the
  peer link and buffered there until the state is in.
- ng: no guarantee (state copied while src keeps processing); lf: loss-free; op: loss-free and
  order-preserving, by DiST's two-phase update with an in-band control packet (IBC).
- pz: state chunks are imported as they are exported (pipelined) instead of all at once;
  ll: late locking, flows are held back chunk by chunk as their state goes out;
  er: early release, a flow's held packets go to dst as soon as its state is in."""
import itertools
import threading
import time
from collections import defaultdict, deque

from .. import layout as L
from ..errors import BadInput, NfxError
from ..state.filter import Filter
from ..state.tables import SCOPES
from .endpoint import wait_for

GUARANTEES = ("ng", "lf", "op")
MECHANISMS = ("opennf", "dist")
OPTIMISATIONS = ("pz", "ll", "er")
QUIET_S = 0.05           # src counts as drained when it passed nothing on for this long
_epochs = itertools.count(int(time.time()) % 100000 * 10 + 1)


def parse_opts(text: str | None) -> set[str]:
    opts = {o.strip().lower() for o in (text or "").replace("|", ",").split(",") if o.strip()}
    bad = opts - set(OPTIMISATIONS)
    if bad:
        raise BadInput(f"unknown optimisation {sorted(bad)}: use pz, ll, er (comma-separated)")
    return opts


class ControllerBuffer:
    """OpenNF's controller-side packet buffer: packets src sent up, held per flow until dst has
    their state, then handed to dst in arrival order. For op it also tracks src's IBC per side:
    what src sends after its cut, the switch delivered to dst already, so it is dropped."""

    def __init__(self, op: bool):
        self.op = op
        self.lock = threading.Lock()
        self.held: deque = deque()
        self.cut = [False, False]
        self.forward_to = None            # once set, packets go straight through
        self.released_keys: set[bytes] = set()
        self.peak = self.total = self.dropped_after_cut = self.received = self.injected = 0
        self.max_hold_us = 0.0

    def take(self, pkts: list) -> None:
        with self.lock:
            self.received += len(pkts)
            for p in pkts:
                if p.kind == L.BufKind.IBC:
                    self.cut[p.side] = True
                    continue
                if self.op and self.cut[p.side]:
                    self.dropped_after_cut += 1
                    continue
                self.total += 1
                self.held.append(p)
            self.peak = max(self.peak, len(self.held))
            ready = self._ready_locked()
        if ready and self.forward_to is not None:
            self._inject(ready)

    def _ready_locked(self) -> list:
        if self.forward_to is None:
            return []
        if self.released_keys is None:            # everything may go
            out = list(self.held)
            self.held.clear()
            return out
        out = [p for p in self.held if p.key in self.released_keys]
        if out:
            self.held = deque(p for p in self.held if p.key not in self.released_keys)
        return out

    def release(self, dst, keys: list | None = None) -> int:
        """Hand held packets to dst: all (keys None) or those of flows whose state is in (ER)."""
        with self.lock:
            self.forward_to = dst
            if keys is None:
                self.released_keys = None
            elif self.released_keys is not None:
                self.released_keys |= {bytes(k) for k in keys}
            ready = self._ready_locked()
        if ready:
            self._inject(ready)
        return len(ready)

    def _inject(self, pkts: list) -> None:
        self.forward_to.inject(pkts)
        self.injected += len(pkts)
        held = (time.monotonic_ns() - min(p.ts_ns for p in pkts)) / 1e3   # kernel stamps are CLOCK_MONOTONIC
        self.max_hold_us = max(self.max_hold_us, held)

    def cut_complete(self) -> bool:
        return all(self.cut)


def move(src, dst, steer, flt: Filter, scopes=SCOPES, guarantee: str = "lf", opts: set[str] = frozenset(),
         mechanism: str = "dist", timeout: float = 30.0, progress=lambda m: None) -> dict:
    """Run one move; returns its metrics. src/dst are endpoints (nfx.migrate.endpoint), steer a
    nfx.control.steer.Steering. On failure the move is rolled back: src keeps the flows."""
    if guarantee not in GUARANTEES:
        raise BadInput(f"guarantee must be one of {', '.join(GUARANTEES)}")
    if mechanism not in MECHANISMS:
        raise BadInput(f"mechanism must be one of {', '.join(MECHANISMS)}")
    if src.name == dst.name:
        raise BadInput("source and destination are the same instance")
    for name, (lo, hi) in (("sport", flt.sport), ("dport", flt.dport)):
        if (lo, hi) != (0, 65535) and lo != hi:
            # the gate's wildcard filters (which hold the flows back) match single ports
            raise BadInput(f"a move's filter takes a single {name}, not a range ({lo}-{hi})")
    op, lf = guarantee == "op", guarantee in ("lf", "op")
    epoch = next(_epochs)
    m = {"mechanism": mechanism, "guarantee": guarantee, "opts": sorted(opts), "src": src.name, "dst": dst.name,
         "filter": flt.text, "scopes": list(scopes), "epoch": epoch}
    t0 = time.perf_counter()
    passed0 = src.passed_on()
    ctrl = ControllerBuffer(op) if mechanism == "opennf" and lf else None
    phases = m["phases_ms"] = {}

    def phase(name):
        phases[name] = round((time.perf_counter() - t0) * 1e3, 2)
    flows, outside = src.keys(flt)
    m["flows"] = len(flows)
    # the gate's wildcard filter holds every flow it matches (and makes its mark on the first
    # packet); explicit marks are only needed for what it cannot see: a NAT's public tuples
    # when the filter does not match everything
    explicit = [] if flt.everything else outside
    phase("keys")
    steered = False
    try:
        if lf:
            progress("holding the flows back")
            # dst holds what reaches it until the state is in (for opennf lf nothing reaches it
            # before the switch update, and the controller's packets are injected as they are)
            er = "er" in opts
            if mechanism == "dist" or op:
                dst.begin("dst", epoch, op, explicit, flt, er=er and mechanism == "dist")
            else:
                dst.begin("dst", epoch, False, [], None)
            role = "src-redirect" if mechanism == "dist" else "src-ctrl"
            # late locking: the source holds flows back chunk by chunk (marks), no filter yet
            src.begin(role, epoch, op, [] if "ll" in opts else explicit, None if "ll" in opts else flt,
                      peer=dst.name, on_ctrl=ctrl.take if ctrl else None)
            phase("held")
        t_state = time.perf_counter()
        if mechanism == "dist" and not ("ll" in opts and lf):
            r = src.push(dst, scopes, flt, pipelined="pz" in opts,
                         on_chunk=(lambda c: _early(dst, None, c)) if "er" in opts and lf else None)
            chunks, nbytes = r["chunks"], r["bytes"]
        else:
            chunks, nbytes = _transfer(src, dst, flt, scopes, mechanism, opts, lf, ctrl, flows)
        m.update(state_chunks=chunks, state_bytes=nbytes, transfer_s=time.perf_counter() - t_state)
        phase("state")
        if lf and not op:
            if mechanism == "dist":
                dst.drain()
            else:
                ctrl.release(dst)
        phase("released" if lf and not op else "pre-steer")
        progress("steering the switches")
        if op:
            steer.point(flt, [src.name, dst.name], outside)            # phase 1: both
            for side, key in _ibc_keys(flows, outside, flt):
                steer.ibc(side, key, epoch)
            steer.point(flt, [dst.name], outside)                       # phase 2: dst only
        else:
            steer.point(flt, [dst.name], outside)
        steered = True
        m["move_time_s"] = time.perf_counter() - t0
        phase("steered")
        if op:
            progress("waiting for the source's cut")
            if mechanism == "dist":
                wait_for(dst.cut_complete, timeout, "the IBC from the source on both sides")
                dst.drain()
            else:
                wait_for(ctrl.cut_complete, timeout, "the source's IBC at the controller")
                ctrl.release(dst)
                dst.drain()
        phase("cut" if op else "drained")
        # src drains: whatever was still on its way there has been passed on
        last = [src.passed_on(), time.perf_counter()]

        def quiet():
            n = src.passed_on()
            now = time.perf_counter()
            if n != last[0]:
                last[:] = [n, now]
            return now - last[1] >= QUIET_S
        wait_for(quiet, timeout, "the source to stop passing packets on")
        m["redirect_time_s"] = last[1] - t_state
        if lf:
            wait_for(dst.settled, timeout, "the destination to release everything it held")
        m["packets_redirected"] = src.passed_on() - passed0
        phase("settled")
    except BaseException as e:
        progress(f"rolling back: {e}")
        _rollback(src, dst, steer, flt, steered, lf, ctrl)
        raise NfxError(f"move {src.name} -> {dst.name} aborted and rolled back: {e}") from e
    src_st = src.end() if lf else {}
    dst_st = dst.end() if lf else {}
    src.delete(scopes, flt)
    m["total_s"] = time.perf_counter() - t0
    m["controller_buffer_peak"] = ctrl.peak if ctrl else 0
    m["controller_packets"] = ctrl.total if ctrl else 0
    if ctrl:
        m["controller"] = {"received": ctrl.received, "held": ctrl.total, "dropped_after_cut": ctrl.dropped_after_cut,
                           "injected": ctrl.injected, "left": len(ctrl.held)}
    m["instance_buffer_peak"] = dst_st.get("buffer_peak", 0)
    m["instance_buffered"] = dst_st.get("buffered", 0)
    m["max_added_delay_us"] = max(dst_st.get("max_hold_us", 0), ctrl.max_hold_us if ctrl else 0)
    ser = src.timing.get("export_s", 0.0) + dst.timing.get("import_s", 0.0)
    m["serialization_share"] = ser / m["move_time_s"] if m["move_time_s"] else 0.0
    return m


def _transfer(src, dst, flt, scopes, mechanism, opts, lf, ctrl, flows) -> tuple[int, int]:
    """Move the state. pz: each chunk is imported as soon as it is out (else all out, then all
    in). ll: flows are held back group by group, each just before its state is read. er: a
    chunk's flows are let go at dst as soon as that chunk is in."""
    pz, ll, er = "pz" in opts, "ll" in opts, "er" in opts
    n = nbytes = 0
    pending = []

    def send(cs):
        nonlocal n, nbytes
        for c in cs:
            n += 1
            nbytes += c.nbytes
            if pz:
                _put(dst, [c])
                if er and lf:
                    _early(dst, ctrl, c)
            else:
                pending.append(c)

    if ll and lf:
        per_flow = [s for s in scopes if s == "per-flow"]
        rest = [s for s in scopes if s != "per-flow"]
        group = max(1024, len(flows) // 8)
        for i in range(0, len(flows), group):
            g = flows[i:i + group]
            src.mark(g, peer=dst.name)
            time.sleep(0.001)    # an XDP run in flight when the mark changed is long done
            if per_flow:
                send(src.export(per_flow, flt, keys=g))
        src.hold_new(flt, peer=dst.name)      # flows born during the move
        if rest:
            send(src.export(rest, flt))
    else:
        send(src.export(scopes, flt))
    if pending:
        _put(dst, pending)
        if er and lf:
            for c in pending:
                _early(dst, ctrl, c)
    return n, nbytes


def _put(dst, chunks) -> None:
    r = dst.put(chunks)
    if r["failed"]:
        raise NfxError(f"{dst.name} did not apply {len(r['failed'])} state chunk(s): {r['failed'][0]['error']}")


def _early(dst, ctrl, c) -> None:
    if c.scope != "per-flow":
        return
    keys = list((L.FlowKey * c.count).from_buffer_copy(c.keys))
    if ctrl is not None:
        ctrl.release(dst, keys)
    else:
        dst.drain(keys)


def _ibc_keys(flows: list, outside: list, flt: Filter):
    """One IBC per side, carrying a moved flow's tuple so the move's rules and marks apply."""
    out = {bytes(o) for o in outside}
    inside = next((k for k in flows if bytes(k) not in out), None)
    if inside is not None:
        yield L.SIDE_IN, inside
        from ..flows import reverse
        yield L.SIDE_OUT, outside[0] if outside else reverse(inside)
    else:
        raise NfxError("an order-preserving move needs at least one existing flow to cut "
                       "(nothing matches the filter yet: use lf)")


def _rollback(src, dst, steer, flt, steered: bool, lf: bool, ctrl=None) -> None:
    """src keeps (or takes back) the flows; dst forgets whatever it got. The controller's held
    packets (opennf) go back to src, so a called-off loss-free move loses none of them; what a
    dead dst held (dist) is gone with it."""
    try:
        if steered:
            steer.point(flt, [src.name], None)
        if ctrl is not None:
            with ctrl.lock:
                held = list(ctrl.held)
                ctrl.held.clear()
                ctrl.forward_to = None
            if held:
                src.inject(held)
    except Exception:
        pass
    finally:
        for ep in (src, dst):
            if not (lf and ep.session is not None):
                continue
            try:
                ep.end()
            except Exception:
                # its agent is gone: clear the instance's move settings through its pins
                try:
                    if hasattr(ep, "force_end"):
                        ep.force_end()
                except Exception:
                    pass
        try:
            dst.delete(SCOPES, flt)
        except Exception:
            pass
