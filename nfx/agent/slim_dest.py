"""SLiM's destination half (`slim_in`): one ordered stream from the source's agent
(nfx/agent/slim_source.py) carries the snapshot, then the statelets, then END.

    request   {op: slim_in, epoch, guarantee, filter, scopes, keys, ready_statelets, rt}
    CHUNK...  JSON {snapshot: n}         installed once all n are in (a resync first sends
                                         {resync: true}: what this instance has of the filter goes)
    STATELETS...                         replayed in order (nfx/state/replay.py: incarnation tags
                                         and per-entry order skip what the snapshot already holds)
    END                                  the source's last statelets: replayed, then (lf/op) the
                                         held packets are released
Back to the source: JSON {ok}; JSON {ready: {applied_records, ...}} each time it has caught up
after the snapshot (a batch smaller than ready_statelets, or none for 5 ms, and nothing else
waiting: the source relays the first to the controller, which starts the redirect, and then the
first that covers what it had sent when the switches duplicated: the controller then cuts); and
END with this side's figures.

lf/op: from the start the flows are marked BUFFER with this move's epoch and the order-preserving
cut on (nfx_gate): switch-path packets before the switch's IBC are the source's (dropped here),
those after it are held until END has been replayed. There is no peer path, so the source's side
of the cut is the stream's end (peer_cut from the start).

Merge: per-flow entries are the moving flows' own. A multi-flow entry this instance already had
(an IDS host whose other flows run here) takes the source's counters on top of its own: the
snapshot and the statelets are kept apart (`_Merge`) and added once, after END."""
import select
import time

from ..errors import BadInput
from ..filter import parse
from ..packets import keys_from_blob
from ..state import ops, wire
from ..state.tables import SCOPES
from .ops_move import _b64
from .prio import enter_rt, leave_rt
from .protocol import REQUEST_MAX
from .slim_merge import Merge
from .transport import Closed, read_header

SLIM_OPS = ("move_slim", "slim_in")
GATHER_BYTES = 8 << 20      # most statelet bytes replayed at once
READY_QUIET_S = 0.005       # caught up, whatever the last batch's size, if nothing follows it this long


class SlimDest:
    """Mixed into the agent (nfx/agent/server.py) with MoveOps (its sessions)."""

    def op_slim_in(self, sock, r, req) -> None:
        epoch, guarantee = int(req.get("epoch", 0)), req.get("guarantee", "lf")
        if guarantee not in ("ng", "lf", "op") or epoch <= 0:
            raise BadInput("slim_in needs an epoch > 0 and a guarantee (ng, lf, op)")
        flt = parse(req.get("filter"))
        scopes = tuple(req.get("scopes") or SCOPES)
        keys = keys_from_blob(_b64(req, "keys"))
        ready_statelets = int(req.get("ready_statelets") or 1)
        lf, rt = guarantee != "ng", bool(req.get("rt"))
        try:
            self._slim_in(sock, r, epoch, lf, rt, flt, scopes, keys, ready_statelets)
        finally:
            leave_rt()

    def _slim_in(self, sock, r, epoch: int, lf: bool, rt: bool, flt, scopes, keys, ready_statelets: int) -> None:
        if lf:
            # held in arrival order (one path in): in the gate, so none passes through here
            s = self._begin_session("dst", epoch, True, keys, flt, 0, in_gate=True)
            s.gate.set_move_cfg(peer_cut=1)       # no peer path: the stream's end is the source's cut
        wire.write(sock, wire.encode_json({"ok": True, "op": "slim_in"}))
        t0 = time.perf_counter()
        merge = Merge(self.nf, scopes, flt)
        report: dict = {}
        fig = {"snapshots": 0, "install_s": 0.0, "statelet_frames": 0, "statelet_bytes": 0, "ready_ms": None,
               "records_applied": 0}
        chunks: list = []
        installed = False
        ahead = None                              # a header read while gathering statelets

        def say_ready() -> None:
            """Caught up: nothing more is waiting, and the source's last batch was small (or
            nothing follows it for a moment: a source whose traffic stopped sends nothing). Said
            every time: the source relays the first (the controller starts phase 1) and the
            first that covers what it had sent when the switches duplicated (then it cuts)."""
            if not installed or ahead is not None or select.select([sock], [], [], 0)[0]:
                return
            if report.get("last_statelets", 0) >= ready_statelets and select.select([sock], [], [], READY_QUIET_S)[0]:
                return
            at = round((time.perf_counter() - t0) * 1e3, 2)
            if rt and fig["ready_ms"] is None:
                fig["rt"] = enter_rt()            # until the stream ends: the cut comes soon
            fig["ready_ms"] = fig["ready_ms"] or at
            wire.write(sock, wire.encode_json({"ready": {"applied": report.get("statelets", 0),
                                                         "applied_records": fig["records_applied"], "at_ms": at}}))
        while True:
            h, ahead = ahead or read_header(r, sock), None
            if h is None:
                raise Closed("the source closed the SLiM stream")
            kind, length = h
            if kind == wire.CHUNK:
                c = r.body(kind, length)
                ops.check(self.nf, c)
                chunks.append(c)
            elif kind == wire.STATELETS:
                # what has queued up meanwhile goes in one replay: a batch costs about the same
                # whatever its size, so a destination that fell behind catches up in big steps
                frames = [wire.decode_statelets(r.body(kind, length))]
                while sum(len(f[0]) for f in frames) < GATHER_BYTES and select.select([sock], [], [], 0)[0]:
                    ahead = read_header(r, sock)
                    if ahead is None or ahead[0] != wire.STATELETS:
                        break
                    frames.append(wire.decode_statelets(r.body(*ahead)))
                    ahead = None
                buf = b"".join(f[0] for f in frames)
                lens = [n for f in frames for n in f[1]]
                fig["statelet_frames"] += len(frames)
                fig["statelet_bytes"] += len(buf)
                merge.apply(buf, lens, report)
                fig["records_applied"] += len(lens)
                say_ready()
            elif kind == wire.JSON:
                msg = r.body(kind, length) if length <= REQUEST_MAX else r.skip(length)
                if not isinstance(msg, dict):
                    raise BadInput("a SLiM stream's JSON frame must be an object")
                if msg.get("resync"):
                    merge.forget()
                    installed, chunks = False, []
                elif "snapshot" in msg:
                    if msg["snapshot"] != len(chunks):
                        raise BadInput(f"the snapshot says {msg['snapshot']} chunks, {len(chunks)} arrived")
                    t1 = time.perf_counter()
                    merge.install(chunks)
                    fig["install_s"] += time.perf_counter() - t1

                    fig["snapshots"] += 1
                    installed, chunks = True, []
                    report["last_statelets"] = 0
                    say_ready()                   # a source whose flows are idle sends no statelets
            elif kind == wire.END:
                r.body(kind, length)
                t_end = time.perf_counter()
                break
            else:
                r.skip(length)
                raise BadInput(f"unexpected {wire.KIND_NAMES.get(kind, kind)} frame in a SLiM stream")
        if not installed:
            raise BadInput("the SLiM stream ended without a snapshot")
        merge.finish()
        applied_at = time.perf_counter()
        if lf:
            self.session.drain(here=True)         # the held packets go, in order, from this thread
        fig["end_ms"] = {"applied": round((applied_at - t_end) * 1e3, 3),
                         "released": round((time.perf_counter() - t_end) * 1e3, 3)}
        self._state_changed()
        wire.write(sock, wire.encode_json({
            **fig, "install_s": round(fig["install_s"], 6), "applied_at": applied_at,
            "replay": {k: v for k, v in report.items() if k != "tables" and k != "last_statelets"},
            "merged": merge.merged}, wire.END))
        return None
