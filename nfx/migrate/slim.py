"""SLiM's controller side (Nobach et al., seeds/slim-statelets-summary.txt): the source's agent
runs the move (nfx/agent/slim_source.py; the destination's half is nfx/agent/slim_dest.py). The
source keeps processing the flows and streams a snapshot then statelets to the destination;
nothing is held while that goes on. When the destination has caught up it says "ready" (through
the source), and the controller points the switches at it:
- lf/op: by the two-phase update (both instances; once the destination has caught up again, the
  IBC on each side; the destination alone). The IBC is the source's cut: it processes what came before and drops the copies after (the
  destination has them), and the destination holds the packets after it until the source's last
  statelets are applied: SLiM's mutual exclusion, for as long as the last statelets take.
- ng: straight to the destination, which processes at once; statelets still on their way may
  then land on entries that moved on (counters keep the larger value).
Then "go" tells the source the switches have changed; it sends the rest of its ring and ends.

rt (nfx's option): both agents run the window from the duplication to the last statelets at
real-time priority (nfx/agent/prio.py), so on a machine the traffic keeps busy the destination's
hold is the work it takes, not the agents' wait for a CPU."""
import time

from .mechanism import Ctx, Mechanism


class Slim(Mechanism):
    name = "slim"
    passes_on = False          # the source keeps processing; the switches copy or repoint

    def run(self, x: Ctx) -> dict:
        req, steer, flt, src, dst = x.req, x.steer, x.flt, x.src, x.dst
        x.progress("the source mirrors the flows and streams their state to the destination")
        run = src.move_slim(dst, x.epoch, req.guarantee, flt, req.scopes, req.timeout, data_link=req.data_link,
                            stall_reader_ms=req.stall_reader_s * 1e3, rt="rt" in req.opts)
        try:
            h = run.held()
            x.flows, x.ibc = h["flows"], h["ibc"]
            x.outside = None if flt.everything else h["outside"]
            x.phase("mirroring")
            ready = run.ready()
            x.phase("ready")
            x.t_state = time.perf_counter()
            x.progress("the destination has caught up: steering the switches")
            x.steered = True
            if x.lf:
                steer.point(flt, [src.name, dst.name], x.outside)
                x.phase("duplicating")
                # the cut starts dst's hold: it waits until dst has caught up with what the
                # source sent while the switches changed, so the hold is the last statelets' time
                run.send({"duplicating": True})
                run.caught_up()
                x.phase("caught_up")
                steer.ibcs(x.ibc, x.epoch)
                x.phase("ibc_sent")
            steer.point(flt, [dst.name], x.outside)
            x.phase("steered")
            run.go()
            x.progress("the source sends its last statelets")
            d = run.done()
            x.state_at = d.get("applied_at") or time.perf_counter()
            x.phase("applied")
        finally:
            run.close()
        dst_fig = d.get("dst") or {}
        wire = {"snapshot": d["snapshot_bytes"], "statelets": d["statelet_bytes"], "control": d.get("control_bytes", 0)}
        return {"state_chunks": d["snapshot_chunks"], "state_bytes": d["snapshot_bytes"] + d["statelet_bytes"],
                "transfer_s": d.get("total_s", 0.0),
                "slim": {"snapshot_entries": d["snapshot_entries"], "statelet_records": d["statelet_records"],
                         "sigma": d.get("sigma"), "resyncs": d["resyncs"],
                         "statelet_ring_drops": d.get("statelet_ring_drops", 0), "ready": ready,
                         "source_phases_ms": d.get("phases_ms"), "replay": dst_fig.get("replay"),
                         "merged": dst_fig.get("merged", 0), "install_s": dst_fig.get("install_s"),
                         "dst_end_ms": dst_fig.get("end_ms"), "max_poll_gap_ms": d.get("max_poll_gap_ms")},
                "bytes_on_wire": {**wire, "total": sum(wire.values())}}

    def cut(self, x: Ctx) -> None:
        """The cut is in the stream: the destination released what it held once the source's last
        statelets were applied (before "done")."""
