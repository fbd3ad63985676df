"""The agent's part in moves (nfx.migrate): one move session at a time per instance. Keys and
packets travel base64-encoded in the JSON requests (flow keys: 16 bytes each; packets: the
buffer ring's header then the bytes, back to back). `move_ctrl` streams what a TO_CTRL source
hands toward the controller, as JSON frames, until the move ends or the client closes."""
import base64
import queue
import threading
import time

from ..errors import BadInput, NfxError
from ..migrate import dataplane as dp
from ..migrate.session import MoveSession
from ..state import ops, wire
from ..state.filter import parse

MOVE_OPS = ("move_begin", "move_hold_new", "move_mark", "move_drain", "move_inject", "move_ctrl", "move_status",
            "move_end", "move_get")


def _b64(req, name, default=b"") -> bytes:
    v = req.get(name)
    if v is None:
        return default
    try:
        return base64.b64decode(v, validate=True)
    except Exception:
        raise BadInput(f"{name} is not base64") from None


def enc(b: bytes) -> str:
    return base64.b64encode(b).decode()


class MoveOps:
    """Mixed into the agent: needs self.nf, self.ns, self.testbed, self.instance."""

    session: MoveSession | None = None
    _ctrl_q: "queue.Queue | None" = None

    def _warm_ring(self) -> None:
        """Map the buffer ring now, off the request path: the first move would pay ~26 ms."""
        nf = self.nf

        def warm():
            try:
                dp.packet_ring(nf)
            except Exception:
                pass      # a move will open it (and report why it cannot)
        threading.Thread(target=warm, daemon=True, name="warm-ring").start()

    def _session(self) -> MoveSession:
        if self.session is None:
            raise BadInput("no move in progress on this instance (move_begin first)")
        return self.session

    def op_move_begin(self, sock, r, req) -> dict:
        if self.session is not None:
            raise BadInput(f"a move (epoch {self.session.epoch}) is already in progress here")
        role = req.get("role")
        epoch = int(req.get("epoch", 0))
        if role not in ("src-redirect", "src-ctrl", "dst") or epoch <= 0:
            raise BadInput("move_begin needs role src-redirect|src-ctrl|dst and an epoch > 0")
        keys = dp.keys_from_blob(_b64(req, "keys"))
        flt = req.get("filter")
        if flt is not None:
            parse(flt)                               # refuse a malformed filter before changing anything
        from ..testbed import state
        info = state.load(self.testbed)["nodes"][self.instance]
        self._ctrl_q = queue.Queue() if role == "src-ctrl" else None
        on_ctrl = self._ctrl_q.put if self._ctrl_q is not None else None
        s = MoveSession(self.nf, info["ns"], info.get("release_if"), epoch, role, bool(req.get("order")), on_ctrl)
        s.er = bool(req.get("er"))
        s.begin(keys, flt, int(req.get("peer", 0)))
        self.session = s
        return {"epoch": epoch, "role": role, "marked": len(keys)}

    def op_move_hold_new(self, sock, r, req) -> dict:
        flt = req.get("filter")
        parse(flt)
        self._session().hold_new(flt, int(req.get("peer", 0)))
        return {"filter": flt}

    def op_move_mark(self, sock, r, req) -> dict:
        keys = dp.keys_from_blob(_b64(req, "keys"))
        self._session().mark(keys, int(req.get("peer", 0)))
        return {"marked": len(keys)}

    def op_move_drain(self, sock, r, req) -> dict:
        blob = _b64(req, "keys", None)
        self._session().drain(dp.keys_from_blob(blob) if blob is not None else None)
        return {"draining": blob is None}

    def op_move_inject(self, sock, r, req) -> dict:
        pkts = dp.unpack(_b64(req, "packets"))
        return {"injected": self._session().inject(pkts)}

    def op_move_status(self, sock, r, req) -> dict:
        s = self._session()
        st = self.nf.stats()
        return {"epoch": s.epoch, "cut_complete": s.cut_complete(), "settled": s.settled() if s.role == "dst" else True,
                "passed_on": st.get("r_redirected", 0) + st.get("r_to_ctrl", 0), "stats": dict(s.stats)}

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
            wire.write(sock, wire.encode_json({"packets": enc(dp.pack(batch)), "n": len(batch)}))
            sent += len(batch)
        wire.write(sock, wire.encode_json({"sent": sent}, wire.END))
        return None

    def op_move_get(self, sock, r, req) -> None:
        """Like get, restricted to the per-flow state of the given flows (late locking)."""
        keys = dp.keys_from_blob(_b64(req, "keys"))
        scopes = tuple(req.get("scopes") or ("per-flow",))
        flt = parse(req.get("filter"))
        t0 = time.perf_counter()
        chunks = list(ops.export(self.nf, scopes, flt, keyset={bytes(k) for k in keys}))
        wire.write(sock, wire.encode_json({"ok": True, "op": "move_get", "chunks": len(chunks),
                                           "export_s": time.perf_counter() - t0}))
        for c in chunks:
            wire.write(sock, wire.encode_chunk(c))
        wire.write(sock, wire.encode_json({"chunks": len(chunks)}, wire.END))
        return None

    def er_after_put(self, chunks) -> None:
        """Early release: flows whose state just arrived may go (called after a put applied)."""
        s = self.session
        if s is None or not getattr(s, "er", False) or s.role != "dst":
            return
        import ctypes as ct
        from .. import layout as L
        keys = []
        for c in chunks:
            if c.scope == "per-flow":
                keys += list((L.FlowKey * c.count).from_buffer_copy(c.keys))
        if keys:
            s.drain(keys)
