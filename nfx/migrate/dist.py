"""DiST's controller side: one request to the source's agent, which runs the move (its half is
nfx/agent's move_dist), then the switches. The options ov and dt are nfx's (mechanism.py)."""
import secrets
import time

from .. import movespec
from .mechanism import Ctx, Mechanism, by_key, cluster_report, inside_cluster, spawn, steer_to_dst, wait_for


class Dist(Mechanism):
    name = "dist"

    def run(self, x: Ctx) -> dict:
        """In the paper's order (Sec. 3.1; lf/op): the request is enableEvent (the source begins
        the move at dst and holds the flows), its "held" answer the ack; then MovePerFlow ("go"):
        the source pushes the state to dst, has it release what it buffered (lf) and answers
        "done"; then the switches change (op: duplicate, IBC, dst only). ng: the request is
        MovePerFlow itself. With ov the source pushes right after holding and the switches are
        pointed at dst on "held" (op: only the duplication overlaps; the cut waits for the
        state). With dt the source fires the armed rules itself: on "held" with ov, else once
        the state is in."""
        req, steer, flt, src, dst = x.req, x.steer, x.flt, x.src, x.dst
        lf, op, dt, ov = x.lf, x.op, "dt" in req.opts, "ov" in req.opts
        x.progress("the source moves the state to the destination")
        x.t_state = time.perf_counter()
        armed = steered = None
        if dt:
            # the armed rules travel to the switches alongside the request to the source
            x.token, x.steered = secrets.randbits(64) or 1, True
            armed = spawn(lambda: steer.arm(flt, [dst.name], x.token))
        try:
            inside = inside_cluster(x)
            run = src.move_dist(dst, x.epoch, req.guarantee, req.opts, flt, req.scopes, req.timeout, fire=x.token,
                                data_link=req.data_link, cluster_inside=inside)
            try:
                h = run.held()
                x.flows, x.ibc = h["flows"], h["ibc"]
                made_up = bool(h.get("ibc_made_up"))
                if h.get("keys") is not None:
                    x.keys = by_key(h["keys"], [], x.ibc)
                x.outside = None if flt.everything else h["outside"]
                x.phase("held")
                if lf and ov and not dt:
                    # the switches are pointed at dst while the source's agent moves the state
                    x.progress("steering the switches")
                    steered = spawn(lambda: steer_to_dst(x, 1))
                elif lf and not ov:
                    run.go()              # MovePerFlow, once enableEvent is acknowledged
                d = run.done()
                if x.flows is None:            # counted as the state went (every flow moved)
                    x.flows = d.get("flows") or 0
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
        r = {"state_chunks": d.get("chunks", 0), "state_bytes": d.get("bytes", 0), "ibc_made_up": made_up,
             "transfer_s": d.get("total_s", 0.0) - d.get("held_s", 0.0), "go_ms": d.get("go_ms")}
        cl = cluster_report(x, inside, d.get("cluster") or {"entries": d.get("entries")})
        if cl:
            r["cluster"] = cl
        if dt:
            r["trigger"] = _fired(x, armed_at, d.get("fired_at"))
            return r
        if steered:
            x.phase("steered" if not op else "duplicated")
        if not steered or op:
            x.progress("steering the switches")
            steer_to_dst(x, phase=2 if steered else 0)
            x.phase("steered")
        return r


def _fired(x: Ctx, armed_at: float, sent_at: float | None) -> dict:
    """dt, after "done": when the armed rules took force (the later of arming and the trigger,
    on the slower switch). Then they are made plain. A trigger that never arrived (the source
    sent none, or it was lost) leaves the steering to the controller, as without dt."""
    steer, flt, dst = x.steer, x.flt, x.dst
    fired: list = []

    def all_fired():
        fired[:] = steer.fired(x.token)
        return all(f is not None for f in fired)
    try:
        wait_for(all_fired, movespec.FIRE_WAIT_S, "the trigger at the switches")
    except TimeoutError:
        x.progress("the trigger did not reach every switch: the controller steers")
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
