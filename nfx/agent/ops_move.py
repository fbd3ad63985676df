"""The agent's move ops (nfx.migrate's requests): one move session (nfx/agent/sessions.py) at a
time per instance. Keys and packets travel base64-encoded in the JSON requests (flow keys: 16
bytes each; packets: the buffer ring's header then the bytes, back to back). `move_ctrl` streams
what a TO_CTRL source hands toward the controller, as JSON frames, until the move ends or the
client closes. `move_dist`, DiST's source half, is nfx/agent/dist_source.py; `move_dup_push`,
the duplication baseline's snapshot, nfx/agent/dup_source.py."""
import base64
import queue
import threading
import time

from ..errors import BadInput
from .. import packets as pk
from ..gate import Gate
from ..state import ops, wire
from ..filter import Filter, parse
from . import late_locking, pauses
from .sessions import HOLDERS, ROLES, MoveSession
from .transport import arg_bytes

# the protocol's move ops; move_dist's handler is in nfx/agent/dist_source.py, move_dup_push's
# in nfx/agent/dup_source.py
MOVE_OPS = ("move_begin", "move_drain", "move_inject", "move_ctrl", "move_status", "move_end", "move_get",
            "move_dist", "move_dup_push", "move_dup_go")


_b64 = arg_bytes      # the name the move's modules know it by


def enc(b: bytes) -> str:
    return base64.b64encode(b).decode()


class MoveOps:
    """Mixed into the agent (nfx/agent/server.py): needs the instance (nfx/agent/instance.py)."""

    session: MoveSession | None = None
    _ctrl_q: "queue.Queue | None" = None

    def _adopted(self) -> None:
        super()._adopted()
        pauses.settle()                   # what the agent has loaded stays out of the collector's walks
        self._warm_ring()

    def _warm_ring(self) -> None:
        """Map the buffer ring now, off the request path: the first move would pay ~26 ms."""
        nf = self.nf

        def warm():
            try:
                Gate(nf).ring()
            except Exception:
                pass      # a move will open it (and report why it cannot)
        threading.Thread(target=warm, daemon=True, name="warm-ring").start()

    def _session(self) -> MoveSession:
        if self.session is None:
            raise BadInput("no move in progress on this instance (move_begin first)")
        return self.session

    def op_move_begin(self, sock, r, req) -> dict:
        role = req.get("role")
        epoch = int(req.get("epoch", 0))
        if role not in ROLES or epoch <= 0:
            raise BadInput(f"move_begin needs role {'|'.join(ROLES)} and an epoch > 0")
        if (req.get("dup") or req.get("hold_own")) and role != "dst":
            raise BadInput("dup (shadow the tagged copies) and hold_own are a destination's settings")
        if req.get("hold_own") and not req.get("dup"):
            raise BadInput("hold_own is for a dup move's destination (dup: true)")
        if req.get("drain_on_cut") and not (role == "dst" and req.get("order")):
            raise BadInput("drain_on_cut is for an order-preserving move's destination (role dst, order: true)")
        keys = pk.keys_from_blob(_b64(req, "keys"))
        text = req.get("filter")
        flt = parse(text) if text is not None else None     # a malformed one is refused before anything changes
        dup = bool(req.get("dup"))
        # dup's holders take their packets in arrival order (one path in): held in the gate
        self._begin_session(role, epoch, bool(req.get("order")), keys, flt, int(req.get("peer", 0)),
                            bool(req.get("er")), dup=dup, hold_own=bool(req.get("hold_own")),
                            in_gate=role == "src-dup" or dup, drain_on_cut=bool(req.get("drain_on_cut")))
        return {"epoch": epoch, "role": role, "marked": len(keys)}

    def _begin_session(self, role: str, epoch: int, op: bool, keys: list, flt: Filter | None, peer: int,
                       er: bool = False, dup: bool = False, hold_own: bool = False,
                       in_gate: bool = False, drain_on_cut: bool = False) -> MoveSession:
        if self.session is not None:
            raise BadInput(f"a move (epoch {self.session.epoch}) is already in progress here")
        self._ctrl_q = queue.Queue() if role == "src-ctrl" else None
        on_ctrl = self._ctrl_q.put if self._ctrl_q is not None else None
        s = MoveSession(self.nf, self.ns, self.release_if, epoch, role, op, on_ctrl, egress=self.wiring)
        s.er, s.dup, s.hold_own, s.in_gate, s.drain_on_cut = er, dup, hold_own, in_gate, drain_on_cut
        s.begin(keys, flt, peer)
        self.session = s
        return s

    def op_move_drain(self, sock, r, req) -> dict:
        blob = _b64(req, "keys", None)
        self._session().drain(pk.keys_from_blob(blob) if blob is not None else None)
        return {"draining": blob is None}

    def op_move_inject(self, sock, r, req) -> dict:
        pkts = pk.unpack(_b64(req, "packets"))
        return {"injected": self._session().inject(pkts)}

    def op_move_status(self, sock, r, req) -> dict:
        s = self._session()
        st = self.nf.stats()
        settled = s.settled() if s.role in HOLDERS else True
        out = {"epoch": s.epoch, "cut_complete": s.cut_complete(), "final_cut": s.final_cut(), "settled": settled,
               "egress_fill": s.egress_fill() if s.role == "src-dup" else 0,
               "passed_on": st.get("r_redirected", 0) + st.get("r_to_ctrl", 0), "stats": dict(s.stats)}
        if not settled and req.get("why"):
            out["unsettled"] = s.unsettled()
        return out

    def op_move_end(self, sock, r, req) -> dict:
        s = self._session()
        st = s.end()
        self.session = None
        if self._ctrl_q is not None:
            self._ctrl_q.put(None)                    # ends a move_ctrl stream
        return {"stats": st}

    def op_move_ctrl(self, sock, r, req) -> None:
        """Stream the source's TO_CTRL packets: JSON frames {"packets": b64, "n": k}, then END."""
        q = self._ctrl_q
        if q is None:
            raise BadInput("no TO_CTRL move in progress on this instance")
        wire.write(sock, wire.encode_json({"ok": True, "op": "move_ctrl"}))
        sent = 0
        while True:
            try:
                first = q.get(timeout=0.5)
            except queue.Empty:
                if self.session is None:
                    break
                continue
            if first is None:
                break
            batch = list(first)
            while not q.empty():
                more = q.get_nowait()
                if more is None:
                    q.put(None)
                    break
                batch += more
            wire.write(sock, wire.encode_json({"packets": enc(pk.pack(batch)), "n": len(batch)}))
            sent += len(batch)
        wire.write(sock, wire.encode_json({"sent": sent}, wire.END))
        return None

    def op_move_get(self, sock, r, req) -> None:
        """The state a move takes, as chunks: everything the filter selects, or with late
        locking (`ll`: this source marks the flows group by group as it reads them, then catches
        new ones)."""
        scopes = tuple(req.get("scopes") or ("per-flow",))
        flt = parse(req.get("filter"))
        t = {}
        t0 = time.perf_counter()
        if req.get("ll"):
            per_flow = list(ops.export(self.nf, ("per-flow",), flt))
            chunks = late_locking.export_locked(self._session(), per_flow, flt, scopes, int(req.get("peer", 0)), t)
        else:
            chunks = ops.export(self.nf, scopes, flt, stats=t)
        wire.write(sock, wire.encode_json({"ok": True, "op": "move_get"}))
        n = 0
        for c in chunks:
            wire.write(sock, wire.encode_chunk(c))
            n += 1
        wire.write(sock, wire.encode_json({"chunks": n, "export_s": t.get("export_s", 0.0),
                                           "total_s": time.perf_counter() - t0}, wire.END))
        return None

    def er_after_put(self, chunks) -> None:
        """Early release: flows whose state just arrived may go (called after a put applied)."""
        s = self.session
        if s is None or not getattr(s, "er", False) or s.role != "dst":
            return
        keys = pk.flow_key_array(chunks)
        if len(keys):
            s.drain(keys)

