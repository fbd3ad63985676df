"""Move(src, dst, filter, scope, guarantee, optimisations, mechanism), after OpenNF and DiST
(seeds/dist-distributed-state-transfer.txt), on nfx's dataplane.

- opennf: state goes src → controller → dst; packets arriving at src during the move go to the
  controller (TO_CTRL) and are handed to dst once their state is there.
- dist: state goes src → dst directly; packets arriving at src are redirected to dst over the
  peer link and buffered there until the state is in. The steps in the paper's order (Sec.
  3.1): lf/op, enableEvent(filter, drop, dst) to the source (it begins the move at dst and
  holds the flows) and its ack; then MovePerFlow(filter, dst): the source pushes the state to
  dst (PutPerFlow), has dst release what it buffered (ReleaseBuffer), and acks; only then does
  the controller update the switches (op: duplicate, IBC, dst only). ng: MovePerFlow alone.
- ng: no guarantee (state copied while src keeps processing); lf: loss-free; op: loss-free and
  order-preserving, by DiST's two-phase update with an in-band control packet (IBC).
- pz: state chunks are imported as they are exported (pipelined) instead of all at once;
  ll: late locking, flows are held back chunk by chunk as their state goes out;
  er: early release, a flow's held packets go to dst as soon as its state is in;
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
through the same link emulation as the control link (nfx/control/link.py). Packets the source
redirects over the peer link and the dt trigger are XDP frames: nothing is added to them."""
import ipaddress
import secrets
import socket
import threading
import time

from .. import layout as L
from . import dataplane as dp
from .ctrlbuf import ControllerBuffer
from ..errors import BadInput, NfxError
from ..state.filter import Filter
from ..state.tables import SCOPES

GUARANTEES = ("ng", "lf", "op")
MECHANISMS = ("opennf", "dist")
OPTIMISATIONS = ("pz", "ll", "er", "ov", "dt")
QUIET_S = 0.05           # src counts as drained when it passed nothing on for this long
FIRE_WAIT_S = 1.0        # dt: the trigger left before "done"; past this the controller steers itself


_last_epoch = 0


def new_epoch() -> int:
    """A move's epoch: random (never 0, never the previous one), so a host that sees one move's
    packets cannot predict the epoch the next move's in-band packets must carry."""
    global _last_epoch
    while (e := secrets.randbelow(0x7FFFFFFF) + 1) == _last_epoch:
        pass
    _last_epoch = e
    return e


def wait_for(cond, timeout: float, what: str, poll: float = 0.002) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - t0


def parse_opts(text: str | None) -> set[str]:
    opts = {o.strip().lower() for o in (text or "").replace("|", ",").split(",") if o.strip()}
    bad = opts - set(OPTIMISATIONS)
    if bad:
        raise BadInput(f"unknown optimisation {sorted(bad)}: use pz, ll, er, ov, dt (comma-separated)")
    return opts


def parse_data_link(req: dict) -> tuple[float, float]:
    """A move request's emulated data link between instances: (one-way delay ms, rate Mbit/s)."""
    try:
        d, r = float(req.get("data_delay_ms") or 0.0), float(req.get("data_rate_mbit") or 0.0)
    except (TypeError, ValueError):
        raise BadInput("data_delay_ms and data_rate_mbit are numbers") from None
    if not (0 <= d <= 10_000 and 0 <= r <= 100_000):
        raise BadInput("data_delay_ms must be 0..10000 and data_rate_mbit 0..100000 (0: no emulated "
                       "delay or rate limit)")
    return d, r


class Ctx:
    """What the move has done so far, for the metrics and for a rollback."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.steered = False
        self.flows = 0
        self.outside: list = []
        self.ibc: list = []
        self.t_state = self.state_at = 0.0
        self.token = 0                    # dt: the armed rules' token
        self.switched_at = 0.0            # dt: when the armed rules took force on every switch

    def phase(self, name: str) -> None:
        self.phases[name] = round((time.perf_counter() - self.t0) * 1e3, 2)


def move(src, dst, steer, flt: Filter, scopes=SCOPES, guarantee: str = "lf", opts: set[str] = frozenset(),
         mechanism: str = "dist", timeout: float = 30.0, progress=lambda m: None,
         data_link: tuple[float, float] = (0.0, 0.0)) -> dict:
    """Run one move; returns its metrics. src/dst are nfx.migrate.remote endpoints, steer a
    controller.DelayedSteering. On failure the move is rolled back: src keeps the flows.

    MoveTime ends when both are true: the state is in at dst (dst's own stamp: one clock on a
    testbed) and the switches' last forwarding update has taken effect."""
    if guarantee not in GUARANTEES:
        raise BadInput(f"guarantee must be one of {', '.join(GUARANTEES)}")
    if mechanism not in MECHANISMS:
        raise BadInput(f"mechanism must be one of {', '.join(MECHANISMS)}")
    if src.name == dst.name:
        raise BadInput("source and destination are the same instance")
    if "dt" in opts and (mechanism != "dist" or guarantee == "op" or not flt.everything):
        raise BadInput("dt (data-plane trigger) is for dist moves of the whole table (filter all) "
                       "with guarantee ng or lf: op cuts the streams with the two-phase update, and a "
                       "partial filter needs the flows' outside keys, which only the source knows")
    if "ov" in opts and (mechanism != "dist" or guarantee == "ng"):
        raise BadInput("ov (overlap steering with the state push) is for dist moves with guarantee lf "
                       "or op: only a destination that holds the flows back may get them before their state")
    for name, (lo, hi) in (("sport", flt.sport), ("dport", flt.dport)):
        if (lo, hi) != (0, 65535) and lo != hi:
            # the gate's wildcard filters (which hold the flows back) match single ports
            raise BadInput(f"a move's filter takes a single {name}, not a range ({lo}-{hi})")
    op, lf = guarantee == "op", guarantee in ("lf", "op")
    epoch = new_epoch()
    m = {"mechanism": mechanism, "guarantee": guarantee, "opts": sorted(opts), "src": src.name, "dst": dst.name,
         "filter": flt.text, "scopes": list(scopes), "epoch": epoch,
         "data_delay_ms": data_link[0], "data_rate_mbit": data_link[1]}
    passed0 = src.passed_on()         # for the metrics: read before the move's clock starts
    x = Ctx()
    m["phases_ms"] = x.phases
    ctrl = ControllerBuffer(op) if mechanism == "opennf" and lf else None
    try:
        if mechanism == "dist":
            r = _dist(src, dst, steer, flt, scopes, guarantee, opts, epoch, timeout, x, progress, data_link)
        else:
            r = _opennf(src, dst, steer, flt, scopes, guarantee, opts, epoch, ctrl, x, progress)
        m.update(r)
        m["flows"] = x.flows
        switched = x.switched_at or steer.applied_at
        m["move_time_s"] = max(x.state_at, switched) - x.t0
        # stamped where they happen (dst's agent, the switch side): the order of the steps
        x.phases["state_in"] = round((x.state_at - x.t0) * 1e3, 2)
        x.phases["switch_update"] = round((switched - x.t0) * 1e3, 2)
        if op:
            progress("waiting for the source's cut")
            if mechanism == "dist":
                wait_for(dst.cut_complete, timeout, "the IBC from the source on both sides")
                dst.drain()
            else:
                wait_for(ctrl.cut_complete, timeout, "the source's IBC at the controller")
                ctrl.release(dst)
                ctrl.flush(timeout)
                dst.drain()
        x.phase("cut" if op else "drained")
        # src drains: whatever was still on its way there has been passed on
        last = [src.passed_on(), time.perf_counter()]

        def quiet():
            n = src.passed_on()
            now = time.perf_counter()
            if n != last[0]:
                last[:] = [n, now]
            return now - last[1] >= QUIET_S
        wait_for(quiet, timeout, "the source to stop passing packets on")
        m["redirect_time_s"] = last[1] - x.t_state
        if lf:
            try:
                wait_for(dst.settled, timeout, "the destination to release everything it held")
            except TimeoutError as e:
                try:
                    why = dst.unsettled()
                except Exception as e2:
                    why = f"(could not ask: {e2})"
                raise TimeoutError(f"{e}: {why}") from None
        m["packets_redirected"] = src.passed_on() - passed0
        src_st = src.end(timeout) if lf else {}
        if ctrl:
            ctrl.flush(timeout)               # what src's stream still brought goes to dst first
        dst_st = dst.end() if lf else {}
        x.phase("settled")
    except BaseException as e:
        progress(f"rolling back: {e}")
        _rollback(src, dst, steer, flt, x.steered, lf, ctrl, x.token)
        raise NfxError(f"move {src.name} -> {dst.name} aborted and rolled back: {e}") from e
    finally:
        if ctrl:
            ctrl.stop()
    src.delete(scopes, flt)
    m["total_s"] = time.perf_counter() - x.t0
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
    m["src_stats"] = src_st
    # ring records of an earlier move that this one found and dropped (session._take)
    m["stale_records"] = src_st.get("stale", 0) + dst_st.get("stale", 0)
    return m


def _steer(steer, flt, src, dst, op: bool, x: Ctx, epoch: int, phase: int = 0) -> None:
    """Point the filter's flows at dst: for op by DiST's two-phase update (phase 1: both; phase
    2: the IBC into each side's FIFO, then dst only, the packet-outs and the update back to
    back, in order on the switch's control link). phase 0: all of it."""
    x.steered = True
    if op and phase in (0, 1):
        steer.point(flt, [src.name, dst.name], x.outside)
    if op and phase in (0, 2):
        for side, key in x.ibc:
            steer.ibc(side, key, epoch)
    if not op or phase in (0, 2):
        steer.point(flt, [dst.name], x.outside)


def _dist(src, dst, steer, flt, scopes, guarantee, opts, epoch, timeout, x: Ctx, progress,
          data_link=(0.0, 0.0)) -> dict:
    """DiST, run by the source's agent. In the paper's order (Sec. 3.1; lf/op): the request is
    enableEvent (the source begins the move at dst and holds the flows), its "held" answer the
    ack; then MovePerFlow ("go"): the source pushes the state to dst, has it release what it
    buffered (lf) and answers "done"; then the switches change (op: duplicate, IBC, dst only).
    ng: the request is MovePerFlow itself. With ov the source pushes right after holding and
    the switches are pointed at dst on "held" (op: only the duplication overlaps; the cut
    waits for the state). With dt the source fires the armed rules itself: on "held" with ov,
    else once the state is in."""
    lf, op, dt, ov = guarantee in ("lf", "op"), guarantee == "op", "dt" in opts, "ov" in opts
    progress("the source moves the state to the destination")
    x.t_state = time.perf_counter()
    armed = steered = None
    if dt:
        # the armed rules travel to the switches alongside the request to the source
        x.token, x.steered = secrets.randbits(64) or 1, True
        armed = _spawn(lambda: steer.arm(flt, [dst.name], x.token))
    try:
        run = src.move_dist(dst, epoch, guarantee, opts, flt, scopes, timeout, fire=x.token, data_link=data_link)
        try:
            h = run.held()
            x.flows, x.ibc = h["flows"], h["ibc"]
            x.outside = None if flt.everything else h["outside"]
            x.phase("held")
            if lf and ov and not dt:
                # the switches are pointed at dst while the source's agent moves the state
                progress("steering the switches")
                steered = _spawn(lambda: _steer(steer, flt, src, dst, op, x, epoch, 1))
            elif lf and not ov:
                run.go()              # MovePerFlow, once enableEvent is acknowledged
            d = run.done()
            x.state_at = d.get("applied_at") or time.perf_counter()
            x.phase("state")
        finally:
            run.close()
    except BaseException:
        # a rollback must not race a steering still under way
        for join in (steered, armed):
            try:
                join and join()
            except Exception:
                pass
        raise
    if steered:
        steered()
    armed_at = armed() if armed else 0.0
    r = {"state_chunks": d.get("chunks", 0), "state_bytes": d.get("bytes", 0),
         "transfer_s": d.get("total_s", 0.0) - d.get("held_s", 0.0), "go_ms": d.get("go_ms")}
    if dt:
        r["trigger"] = _fired(steer, flt, dst, x, armed_at, d.get("fired_at"), progress)
        return r
    if steered:
        x.phase("steered" if not op else "duplicated")
    if not steered or op:
        progress("steering the switches")
        _steer(steer, flt, src, dst, op, x, epoch, phase=2 if steered else 0)
        x.phase("steered")
    return r


def _fired(steer, flt, dst, x: Ctx, armed_at: float, sent_at: float | None, progress) -> dict:
    """dt, after "done": when the armed rules took force (the later of arming and the trigger,
    on the slower switch). Then they are made plain. A trigger that never arrived (the source
    sent none, or it was lost) leaves the steering to the controller, as without dt."""
    fired: list = []

    def all_fired():
        fired[:] = steer.fired(x.token)
        return all(f is not None for f in fired)
    try:
        wait_for(all_fired, FIRE_WAIT_S, "the trigger at the switches")
    except TimeoutError:
        progress("the trigger did not reach every switch: the controller steers")
        steer.point(flt, [dst.name], None)
        steer.forget_token(x.token)
        x.phase("steered")
        return {"fired": False, "armed_ms": round((armed_at - x.t0) * 1e3, 2)}
    x.switched_at = max([armed_at] + fired)
    x.phase("steered")
    steer.settle(flt, [dst.name], x.token)
    x.phase("settled_rules")
    return {"fired": True, "armed_ms": round((armed_at - x.t0) * 1e3, 2),
            "sent_ms": round((sent_at - x.t0) * 1e3, 2) if sent_at else None,
            "fired_ms": [round((f - x.t0) * 1e3, 2) for f in fired]}


def _opennf(src, dst, steer, flt, scopes, guarantee, opts, epoch, ctrl, x: Ctx, progress) -> dict:
    """OpenNF: the controller begins the move at both instances, takes the state from src and
    puts it to dst, holds what src sends up meanwhile, hands it to dst, then steers."""
    lf, op, ll = guarantee in ("lf", "op"), guarantee == "op", "ll" in opts
    explicit: list = []
    synth = None
    if not flt.everything:
        # a partial filter cannot see a NAT's public tuples: they are marked explicitly
        flows, explicit = src.keys(flt)
        x.phase("keys")
        if op and not any(bytes(k) not in {bytes(o) for o in explicit} for k in flows):
            # nothing to take the cut's tuple from: one made from the filter, whose outside
            # tuple is marked and steered like a public tuple (ibc_synthetic)
            synth = ibc_synthetic(flt)
            explicit = explicit + [synth[1][1]]
    if lf:
        progress("holding the flows back")
        # the two requests at once, each waiting for its own round trip
        began = _spawn(lambda: dst.begin("dst", epoch, op, explicit if op else [], flt if op else None))
        src.begin("src-ctrl", epoch, op, ([] if ll else explicit) + ([synth[1][1]] if synth and ll else []),
                  None if ll else flt, on_ctrl=ctrl.take)
        began()
        x.phase("held")
    x.t_state = time.perf_counter()
    chunks, nbytes, applied_at = _transfer(src, dst, flt, scopes, opts, lf, op, ctrl, x)
    if synth:
        x.ibc = list(synth)
        x.outside = x.outside + [synth[1][1]]
    x.state_at = applied_at or time.perf_counter()
    x.phase("state")
    if lf and not op:
        ctrl.release(dst)
    progress("steering the switches")
    _steer(steer, flt, src, dst, op, x, epoch)
    x.phase("steered")
    return {"state_chunks": chunks, "state_bytes": nbytes, "transfer_s": x.state_at - x.t_state}


def _spawn(fn):
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


def _transfer(src, dst, flt, scopes, opts, lf, op, ctrl, x: Ctx) -> tuple[int, int, float | None]:
    """The state through the controller. pz: each chunk is put as it comes from src (puts
    pipelined), else all out, then all in. ll: src holds flows back group by group as it reads
    their state. er: a chunk's flows are let go (to dst) as soon as dst has applied it. The
    chunks also tell the controller the flows' keys (the IBC's, a NAT's public tuples)."""
    er = "er" in opts and lf
    ll = "ll" in opts and lf
    chunks: list = []

    def applied(r, cs):
        if er:
            for c in cs:
                _early(dst, ctrl, c)
    exported = src.export(scopes, flt, ll=ll, peer=dst.name)

    def kept():
        for c in exported:
            chunks.append(c)
            yield c
    try:
        sent = dst.send_state(kept(), "pz" in opts, applied)
    finally:
        exported.close()          # lets go of src's connection even if dst failed half way
    flows, outside = dp.flow_keys(chunks)
    x.flows = len(flows)
    x.outside = None if flt.everything else outside
    if op:
        x.ibc = list(ibc_keys(flows, outside, flt))
    return sent["chunks"], sent["bytes"], sent["applied_at"]


def _early(dst, ctrl, c) -> None:
    keys = dp.flow_keys([c])[0]
    if not keys:
        return
    if ctrl is not None:
        ctrl.release(dst, keys)
    else:
        dst.drain(keys)


def ibc_keys(flows: list, outside: list, flt: Filter) -> list:
    """One IBC per side, [(side, key)], carrying a moved flow's tuple so the move's rules and
    marks apply; with no flow to take it from, a tuple made from the filter (ibc_synthetic)."""
    out = {bytes(o) for o in outside}
    inside = next((k for k in flows if bytes(k) not in out), None)
    if inside is None:
        return list(ibc_synthetic(flt))
    from ..flows import reverse
    return [(L.SIDE_IN, inside), (L.SIDE_OUT, outside[0] if outside else reverse(inside))]


def ibc_synthetic(flt: Filter) -> tuple:
    """The IBCs of a move with no flow of its own to cut (none matches the filter when the
    source holds them): a tuple that matches the filter, wildcards filled, and its reverse.

    Why that is enough, and flows born during the move keep their order: the cut is per side,
    not per flow. Each side's IBC enters the switch on the port the filter's packets enter by,
    behind them in the same FIFO, and the filter's rule (the same rule for every flow it
    matches) sends it where those packets go: in phase 1 to both instances. At the source it
    meets the move's filter (or its mark) like any packet of the filter and is passed on behind
    them. So it marks the same point in both streams for every flow of the filter, including
    one born a moment before or after it: at dst, that flow's switch-path packets before the
    cut are dropped (the source passed them on), those after it wait until everything the
    source passed on before its cut has gone. Skipping the cut instead would be safe only if
    no flow could be born during the move, which live traffic never proves.

    On the outside of a partial filter a NAT's return traffic is steered by exact rules on the
    public tuples, of which there are none yet: the reverse tuple then gets an exact rule and a
    mark at both instances like a moved flow's public tuple (the caller adds it to the outside
    keys and the explicit marks), so it too follows a rule of the move."""
    def host(net_mask, fill):
        net, mask = net_mask
        return net if mask else int.from_bytes(ipaddress.IPv4Address(fill).packed, "little")

    def port(r, fill):
        return socket.htons(r[0] if r[0] == r[1] else fill)
    k = L.FlowKey(saddr=host(flt.src, "192.0.2.1"), daddr=host(flt.dst, "198.51.100.1"),
                  sport=port(flt.sport, 65534), dport=port(flt.dport, 9), proto=flt.proto or 17)
    from ..flows import reverse
    return (L.SIDE_IN, k), (L.SIDE_OUT, reverse(k))


def _rollback(src, dst, steer, flt, steered: bool, lf: bool, ctrl=None, token: int = 0) -> None:
    """src keeps (or takes back) the flows; dst forgets whatever it got. The controller's held
    packets (opennf) go back to src, so a called-off loss-free move loses none of them; what a
    dead dst held (dist) is gone with it."""
    try:
        if steered:
            steer.point(flt, [src.name], None)
            if token:
                steer.forget_token(token)
        if ctrl is not None:
            held = ctrl.take_back()
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
            try:
                dst.force_delete(SCOPES, flt)
            except Exception:
                pass
