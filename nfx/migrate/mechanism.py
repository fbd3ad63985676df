"""Move(src, dst, filter, scope, guarantee, optimisations, mechanism), after OpenNF and DiST
(seeds/dist-distributed-state-transfer.txt), on nfx's dataplane: the controller's side. What
every mechanism shares is here: the move from request to metrics (`move`), the waits for the
source to go quiet and the destination to settle, the steering, the rollback. What differs is a
`Mechanism` (opennf.py, dist.py, dup.py; their agent halves in nfx/agent), registered by name.

- opennf: state goes src → controller → dst; packets arriving at src during the move go to the
  controller (TO_CTRL) and are handed to dst once their state is there.
- dist: state goes src → dst directly; packets arriving at src are redirected to dst over the
  peer link and buffered there until the state is in. The steps in the paper's order (Sec.
  3.1): lf/op, enableEvent(filter, drop, dst) to the source (it begins the move at dst and
  holds the flows) and its ack; then MovePerFlow(filter, dst): the source pushes the state to
  dst (PutPerFlow), has dst release what it buffered (ReleaseBuffer), and acks; only then does
  the controller update the switches (op: duplicate, IBC, dst only). ng: MovePerFlow alone.
- dup: the duplication baseline (issue 12; dup.py): the switches duplicate the flows to both,
  tagged; dst processes its copies in shadow (output dropped) on top of src's snapshot, and the
  switches are repointed at dst once it has caught up (op: dst's own packets wait until src's
  last outputs have left).
- ng: no guarantee (state copied while src keeps processing); lf: loss-free; op: loss-free and
  order-preserving, by DiST's two-phase update with an in-band control packet (IBC).
- pz: state chunks are imported as they are exported (pipelined) instead of all at once;
  ll: late locking, flows are held back chunk by chunk as their state goes out;
  er: early release, a flow's held packets go to dst as soon as its state is in;
  pc (dist, with pz,ll,er; nfx's, not in the papers): paced late locking. The source marks the
  next group of flows only once dst has the last one's state in and its packets released, so a
  packet waits for its own group alone (nfx/agent/late_locking.py);
  ov (dist, lf/op; nfx's, not in the papers): overlap. One request: the source pushes the state
  as soon as it holds the flows (no separate MovePerFlow), and the controller points the
  switches at dst on the "held" answer, while the state is still moving (op: only the
  duplication; the cut waits for the state) - the reordering the paper leaves to future work;
  dt (dist, ng/lf, filter all; nfx's, not in the papers): data-plane trigger. The controller
  arms the switches' rules toward dst along with its request, and the source's agent fires
  them with a packet once the switches may change: when the state is in (and, lf, released)
  at dst, or with ov as soon as the flows are held. The forwarding update then costs no
  control round trip.

The data link between instances (data_delay_ms, data_rate_mbit) is emulated on what the
agents send each other (dist: the source's requests to dst, its state push and ReleaseBuffer),
through the same link emulation as the control link (nfx/agent/link.py). Packets the source
redirects over the peer link and the dt trigger are XDP frames: nothing is added to them.

Adding a mechanism: a module here with a Mechanism subclass (its controller side), its agent
half in nfx/agent, and one register() call in nfx/migrate/__init__.py."""
import threading
import time
from typing import Protocol

from .. import movespec
from ..errors import BadInput, NfxError
from ..gate import check_ports
from ..movespec import MECHANISMS, MoveMetrics, MoveRequest, new_epoch
from ..filter import Filter
from ..state.tables import SCOPES
from .ctrlbuf import ControllerBuffer


class Ctx:
    """One move under way: what was asked (req), between which endpoints (nfx.migrate.endpoint)
    over which switches (controller.DelayedSteering), and what it has done so far, for the
    metrics and for a rollback."""

    def __init__(self, req: MoveRequest, src, dst, steer, epoch: int = 0, progress=lambda m: None):
        self.req, self.src, self.dst, self.steer = req, src, dst, steer
        self.flt: Filter = req.filter
        self.epoch, self.progress = epoch, progress
        self.lf, self.op = req.lf, req.op
        self.t0 = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.steered = False
        self.flows = 0
        self.outside: list | None = []
        self.ibc: list = []
        # a spread testbed (the switches spread flows over the instances): the moved flows' keys,
        # inside and outside, that the switches are pointed by (None: by the filter)
        self.keys: list | None = None
        self.t_state = self.state_at = 0.0
        self.token = 0                    # dt: the armed rules' token
        self.switched_at = 0.0            # dt: when the armed rules took force on every switch
        self.ctrl: ControllerBuffer | None = None   # packets held at the controller (opennf lf/op)

    def phase(self, name: str) -> None:
        self.phases[name] = round((time.perf_counter() - self.t0) * 1e3, 2)


class Mechanism(Protocol):
    """A mechanism's controller side. run() holds the flows, moves their state and steers the
    switches, stamping phases on the Ctx, and returns its figures (state_chunks, state_bytes,
    transfer_s, then its own). cut() (op) waits for the source's IBC on both sides and lets go
    of what was held behind it; by default the source redirected to dst, so dst sees the cut.
    passes_on: whether the source passes packets on during the move (redirect or controller);
    one that never does has nothing to drain after the cut."""
    name: str
    passes_on: bool = True

    def run(self, x: Ctx) -> dict: ...

    def cut(self, x: Ctx) -> None:
        wait_for(x.dst.cut_complete, x.req.timeout, "the IBC from the source on both sides")
        x.dst.drain()


REGISTRY: dict[str, type[Mechanism]] = {}
SPREAD_MECHANISMS = ("opennf", "dist")     # those that steer by the moved flows' keys (Ctx.keys)


def register(cls: type[Mechanism]) -> type[Mechanism]:
    """Make a mechanism known by its name (to requests, the CLI and the bench: movespec.MECHANISMS)."""
    REGISTRY[cls.name] = cls
    if cls.name not in MECHANISMS:
        MECHANISMS.append(cls.name)
    return cls


def wait_for(cond, timeout: float, what: str, poll: float = 0.002) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - t0


def move(req: MoveRequest, src, dst, steer, progress=lambda m: None) -> MoveMetrics:
    """Run one move; returns its metrics. src/dst are nfx.migrate.endpoint endpoints, steer a
    controller.DelayedSteering. On failure the move is rolled back: src keeps the flows.

    MoveTime ends when both are true: the state is in at dst (dst's own stamp: one clock on a
    testbed) and the switches' last forwarding update has taken effect."""
    check_ports(req.filter)
    if getattr(src, "spread", False) and (req.mechanism not in SPREAD_MECHANISMS or "dt" in req.opts):
        raise BadInput(f"this testbed's switches spread the flows over the instances: a move there steers its "
                       f"own flows by key, which {', '.join(SPREAD_MECHANISMS)} do (without dt, whose armed rules "
                       f"are wildcards), not {req.mechanism}" + (" with dt" if "dt" in req.opts else ""))
    queues = getattr(src, "queues", 1)
    if req.guarantee == "op" and queues > 1:
        # the in-band cut (an IBC, a marker) orders one FIFO; each queue of a veth is one
        raise BadInput(f"an order-preserving move cuts each link's packet FIFO with an in-band packet, and "
                       f"this testbed's veths have {queues} queues, each a FIFO of its own: the cut would be "
                       f"exact in one of them", hint="ng and lf moves work here; for op, a testbed with one "
                       "queue (the default)")
    if not getattr(src, "spread", False):
        # the switches' wildcard slots, before anything is held or sent: a move that found them
        # full at its second point (op's cut) failed late, and so did its rollback's point
        steer.check_room(req.filter, armed="dt" in req.opts)
    mech = REGISTRY[req.mechanism]()
    epoch = new_epoch()
    m = MoveMetrics(mechanism=req.mechanism, guarantee=req.guarantee, opts=sorted(req.opts), src=src.name,
                    dst=dst.name, filter=req.filter.text, scopes=list(req.scopes), epoch=epoch,
                    data_delay_ms=req.data_link[0], data_rate_mbit=req.data_link[1])
    passed0 = src.passed_on()         # for the metrics: read before the move's clock starts
    x = Ctx(req, src, dst, steer, epoch, progress)
    m.phases_ms = x.phases
    try:
        r = mech.run(x)
        m.state_chunks, m.state_bytes, m.transfer_s = r.pop("state_chunks"), r.pop("state_bytes"), r.pop("transfer_s")
        m.extra = r
        m.flows = x.flows
        switched = x.switched_at or steer.applied_at
        m.move_time_s = max(x.state_at, switched) - x.t0
        # stamped where they happen (dst's agent, the switch side): the order of the steps
        x.phases["state_in"] = round((x.state_at - x.t0) * 1e3, 2)
        x.phases["switch_update"] = round((switched - x.t0) * 1e3, 2)
        if x.op:
            progress("waiting for the source's cut")
            mech.cut(x)
        x.phase("cut" if x.op else "drained")
        # a source that passes nothing on (slim, dup) has nothing on its way to wait for
        m.redirect_time_s = _quiet(x) - x.t_state if mech.passes_on else 0.0
        if x.lf:
            _settled(x)
            x.phase("released")
        m.packets_redirected = src.passed_on() - passed0
        src_st = src.end(req.timeout) if x.lf else {}
        x.phase("src_ended")
        if x.ctrl:
            x.ctrl.flush(req.timeout)         # what src's stream still brought goes to dst first
        dst_st = dst.end() if x.lf else {}
        x.phase("settled")
    except BaseException as e:
        progress(f"rolling back: {e}")
        _rollback(x)
        raise NfxError(f"move {src.name} -> {dst.name} aborted and rolled back: {e}") from e
    finally:
        if x.ctrl:
            x.ctrl.stop()
    # a move across clusters: the flows left src's, whose members drop their replicas of them
    across = getattr(src, "shares", False) and (m.extra.get("cluster") or {}).get("kind") == "across"
    src.delete(req.scopes, req.filter, x.keys, forget=across)
    m.total_s = time.perf_counter() - x.t0
    ctrl = x.ctrl
    m.controller_buffer_peak = ctrl.peak if ctrl else 0
    m.controller_packets = ctrl.total if ctrl else 0
    if ctrl:
        m.controller = {"received": ctrl.received, "held": ctrl.total, "dropped_after_cut": ctrl.dropped_after_cut,
                        "injected": ctrl.injected, "left": len(ctrl.held)}
    m.instance_buffer_peak = dst_st.get("buffer_peak", 0)
    m.instance_buffered = dst_st.get("buffered", 0)
    m.max_added_delay_us = max(dst_st.get("max_hold_us", 0), ctrl.max_hold_us if ctrl else 0)
    if dst_st.get("ring_waits"):
        m.release_ring_waits = {"calls": dst_st["ring_waits"], "ms": dst_st["ring_wait_ms"]}
    ser = src.timing.get("export_s", 0.0) + dst.timing.get("import_s", 0.0)
    m.serialization_share = ser / m.move_time_s if m.move_time_s else 0.0
    m.src_stats = src_st
    # ring records of an earlier move that this one found and dropped (session._take)
    m.stale_records = src_st.get("stale", 0) + dst_st.get("stale", 0)
    return m


def _quiet(x: Ctx) -> float:
    """src drains: wait until whatever was still on its way there has been passed on. Returns
    when it last passed a packet on (perf_counter)."""
    last = [x.src.passed_on(), time.perf_counter()]

    def quiet():
        n = x.src.passed_on()
        now = time.perf_counter()
        if n != last[0]:
            last[:] = [n, now]
        return now - last[1] >= movespec.QUIET_S
    wait_for(quiet, x.req.timeout, "the source to stop passing packets on")
    return last[1]


def _settled(x: Ctx) -> None:
    """lf/op: dst has released everything it held."""
    try:
        wait_for(x.dst.settled, x.req.timeout, "the destination to release everything it held")
    except TimeoutError as e:
        try:
            why = x.dst.unsettled()
        except Exception as e2:
            why = f"(could not ask: {e2})"
        raise TimeoutError(f"{e}: {why}") from None


def steer_to_dst(x: Ctx, phase: int = 0) -> None:
    """Point the filter's flows at dst: for op by DiST's two-phase update (phase 1: both; phase
    2: the IBC into each side's FIFO, then dst only, the packet-outs and the update back to
    back, in order on the switch's control link). phase 0: all of it."""
    x.steered = True
    if x.op and phase in (0, 1):
        x.steer.point(x.flt, [x.src.name, x.dst.name], x.outside, keys=x.keys)
    if x.op and phase in (0, 2):
        x.steer.ibcs(x.ibc, x.epoch)
    if not x.op or phase in (0, 2):
        x.steer.point(x.flt, [x.dst.name], x.outside, keys=x.keys)


def by_key(flows: list, outside: list, ibc: list) -> list:
    """A spread testbed's steering keys (Ctx.keys): the moved flows', their public tuples, and
    the IBCs' (a move with no flow of its own cuts on a tuple made from the filter, which must
    reach both instances like the flows would)."""
    have = {bytes(k) for k in flows} | {bytes(k) for k in outside}
    return list(flows) + list(outside) + [k for _, k in ibc if bytes(k) not in have]


def inside_cluster(x: Ctx) -> bool:
    """Both ends share in batches in one cluster (issue 13): the move carries the last batch only
    (not with ll, whose holds follow the export chunk by chunk)."""
    src, dst = x.src, x.dst
    return bool(getattr(src, "shares", False) and getattr(dst, "shares", False) and src.cluster == dst.cluster
                and "ll" not in x.req.opts)


def cluster_report(x: Ctx, inside: bool, figures: dict) -> dict | None:
    """The move's `cluster` figures: which kind it was and what it sent; None outside clusters."""
    sc, dc = getattr(x.src, "cluster", None), getattr(x.dst, "cluster", None)
    if sc is None and dc is None:
        return None
    return {"kind": "inside" if inside else "across", "src": sc, "dst": dc,
            "sharing": bool(getattr(x.src, "shares", False) and getattr(x.dst, "shares", False)), **figures}


def spawn(fn):
    """Run fn on a thread; returns a join that returns what fn returned, or raises what it raised."""
    out, err = [None], []

    def run():
        try:
            out[0] = fn()
        except BaseException as e:
            err.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join()
        if err:
            raise err[0]
        return out[0]
    return join


def _rollback(x: Ctx) -> None:
    """src keeps (or takes back) the flows; dst forgets whatever it got. The controller's held
    packets (opennf) go back to src, so a called-off loss-free move loses none of them; what a
    dead dst held (dist) is gone with it."""
    src, dst, steer, flt = x.src, x.dst, x.steer, x.flt
    try:
        if x.steered:
            # the return traffic by the keys the move pointed (None would add a reversed
            # wildcard on the outside switch, one slot more, and leave the keys at dst)
            steer.point(flt, [src.name], x.outside if not flt.everything else None, keys=x.keys)
            if x.token:
                steer.forget_token(x.token)
        if x.ctrl is not None:
            held = x.ctrl.take_back()
            if held:
                src.inject(held)
    except Exception:
        pass
    finally:
        for ep in (src, dst):
            if not (x.lf and ep.session is not None):
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
            dst.delete(SCOPES, flt, x.keys)
        except Exception:
            try:
                dst.force_delete(SCOPES, flt, x.keys)
            except Exception:
                pass
