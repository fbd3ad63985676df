"""The agent's part in moves (nfx.migrate): one move session at a time per instance. Keys and
packets travel base64-encoded in the JSON requests (flow keys: 16 bytes each; packets: the
buffer ring's header then the bytes, back to back). `move_ctrl` streams what a TO_CTRL source
hands toward the controller, as JSON frames, until the move ends or the client closes.
`move_dist` is DiST's move run here, at the source, in the paper's order: enableEvent (this
agent begins the move at the destination's agent and holds the flows; "held" acknowledges it),
then MovePerFlow (the controller's "go": the state is pushed to dst directly and released
there; END acknowledges it). With `fire` it also sends the trigger that puts the controller's
armed rules in force on both switches (nfx/control/frames.py), over the data plane."""
import base64
import queue
import socket
import threading
import time

from ..errors import BadInput
from ..migrate import dataplane as dp
from ..migrate.session import MoveSession
from ..state import ops, wire
from ..state.filter import parse

MOVE_OPS = ("move_begin", "move_drain", "move_inject", "move_ctrl", "move_status", "move_end", "move_get",
            "move_dist")


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
    """Mixed into the agent: needs self.nf, self.ns, self.testbed, self.instance, self.wiring."""

    session: MoveSession | None = None
    _ctrl_q: "queue.Queue | None" = None
    _fire_socks: "dict[str, tuple[socket.socket, bytes]] | None" = None

    def _fire(self, token: int) -> float:
        """The trigger out of both sides, to the switch at the other end of each: the armed
        rules take force when it arrives. Returns when it was sent (perf_counter)."""
        from ..control.frames import trigger_frame
        for attempt in (1, 2):
            if self._fire_socks is None:
                socks = {}
                for ifname in self.wiring:
                    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)     # protocol 0: receives nothing
                    s.bind((ifname, 0))
                    socks[ifname] = (s, s.getsockname()[4])                   # the interface's MAC
                self._fire_socks = socks        # kept: closing a packet socket waits out an RCU grace period
            try:
                for s, mac in self._fire_socks.values():
                    s.send(trigger_frame(token, mac))
                return time.perf_counter()
            except OSError:
                # an interface recreated under us (the binding holds the old ifindex): bind again
                for s, _ in self._fire_socks.values():
                    s.close()
                self._fire_socks = None
                if attempt == 2:
                    raise

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
        role = req.get("role")
        epoch = int(req.get("epoch", 0))
        if role not in ("src-redirect", "src-ctrl", "dst") or epoch <= 0:
            raise BadInput("move_begin needs role src-redirect|src-ctrl|dst and an epoch > 0")
        keys = dp.keys_from_blob(_b64(req, "keys"))
        flt = req.get("filter")
        if flt is not None:
            parse(flt)                               # refuse a malformed filter before changing anything
        self._begin_session(role, epoch, bool(req.get("order")), keys, flt, int(req.get("peer", 0)),
                            bool(req.get("er")))
        return {"epoch": epoch, "role": role, "marked": len(keys)}

    def _begin_session(self, role: str, epoch: int, op: bool, keys: list, flt: str | None, peer: int,
                       er: bool = False) -> MoveSession:
        if self.session is not None:
            raise BadInput(f"a move (epoch {self.session.epoch}) is already in progress here")
        from ..testbed import state
        info = state.load(self.testbed)["nodes"][self.instance]
        self._ctrl_q = queue.Queue() if role == "src-ctrl" else None
        on_ctrl = self._ctrl_q.put if self._ctrl_q is not None else None
        s = MoveSession(self.nf, info["ns"], info.get("release_if"), epoch, role, op, on_ctrl)
        s.er = er
        s.begin(keys, flt, peer)
        self.session = s
        return s

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
        settled = s.settled() if s.role == "dst" else True
        out = {"epoch": s.epoch, "cut_complete": s.cut_complete(), "settled": settled,
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
            wire.write(sock, wire.encode_json({"packets": enc(dp.pack(batch)), "n": len(batch)}))
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
            flows = dp.flow_keys(ops.export(self.nf, ("per-flow",), flt))[0]
            chunks = self._session().export_locked(flows, flt.text, scopes, int(req.get("peer", 0)), t)
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

    def op_move_dist(self, sock, r, req) -> None:
        """DiST's move, run at the source, in the paper's order (Sec. 3.1). lf/op: the request
        is enableEvent(filter, drop, dst): begin the move at dst (it buffers) and here (redirect
        to dst), then the "held" frame acknowledges it. Then the controller's "go" frame is
        MovePerFlow: push the state to dst, ReleaseBuffer there (lf), and END acknowledges it.
        ng: the request is MovePerFlow itself ("held" says only that the push starts). ov: no
        "go" to wait for, the push follows the hold at once. fire: the token of rules the
        controller armed on the switches, fired from here once they may change (ov: on hold;
        else once the state is in at dst and, lf, released). data_delay_ms/data_rate_mbit put
        this agent's connection to dst behind an emulated data link (nfx/control/link.py)."""
        from ..migrate import mechanisms as M
        from ..state.tables import SCOPES
        from ..testbed import state
        from .client import AgentClient
        dst, epoch, guarantee = req.get("dst"), int(req.get("epoch", 0)), req.get("guarantee", "lf")
        opts = M.parse_opts(",".join(req.get("opts") or []))
        if guarantee not in M.GUARANTEES or epoch <= 0 or not isinstance(dst, str):
            raise BadInput(f"move_dist needs dst, an epoch > 0 and a guarantee ({', '.join(M.GUARANTEES)})")
        flt = parse(req.get("filter"))
        scopes = tuple(req.get("scopes") or SCOPES)
        data_delay, data_rate = M.parse_data_link(req)
        slot = state.load(self.testbed)["nodes"][self.instance].get("peer_slots", {}).get(dst)
        if slot is None:
            raise BadInput(f"{self.instance} has no peer link to {dst}: cannot redirect to it")
        if self.session is not None:
            raise BadInput(f"a move (epoch {self.session.epoch}) is already in progress here")
        lf, op, ll, ov = guarantee in ("lf", "op"), guarantee == "op", "ll" in opts, "ov" in opts
        fire = req.get("fire")
        try:
            token = int(fire, 16) if fire is not None else 0
        except (TypeError, ValueError):
            raise BadInput("fire is the armed rules' token, in hex") from None
        if fire is not None and (op or not 0 < token < 1 << 64):
            raise BadInput("fire needs a nonzero 64-bit token and a guarantee of ng or lf "
                           "(op cuts the streams with the two-phase update)")
        timeout = float(req.get("timeout", 30))
        t0 = time.perf_counter()
        fired_at = None

        def keys():
            return dp.flow_keys(ops.export(self.nf, ("per-flow",), flt))
        # the hold needs the keys only to mark a partial filter's flows or to cut (op); otherwise
        # they are read once the filter holds every flow, off the way to the hold (and trigger)
        keys_first = op or not flt.everything
        flows, outside = keys() if keys_first else ([], [])
        explicit = [] if flt.everything else outside
        ibc = M.ibc_keys(flows, outside, flt) if op else []
        synth = []
        if op and not flt.everything and not any(bytes(k) == bytes(ibc[0][1]) for k in flows):
            # a made-up cut (no flow matches yet): its outside tuple is marked and steered like
            # a public tuple (mechanisms.ibc_synthetic)
            synth = [ibc[1][1]]
            outside = outside + synth
        peer = AgentClient(self.testbed, dst, ns=None, timeout=timeout, delay_ms=data_delay, rate_mbit=data_rate)
        try:
            if lf:
                peer.request("move_begin", role="dst", epoch=epoch, order=op,
                             keys=enc(dp.keys_blob(explicit + synth)), filter=flt.text, er="er" in opts)
                s = self._begin_session("src-redirect", epoch, op, [] if ll else explicit,
                                        None if ll else flt.text, slot)
                if synth:
                    s.mark(synth, slot)
                if token and ov:
                    # dst buffers the flows and this source redirects them: the switches may
                    # send them to dst from now on
                    fired_at = self._fire(token)
            if not keys_first:
                flows, outside = keys()
            held_s = time.perf_counter() - t0
            wire.write(sock, wire.encode_json({
                "ok": True, "op": "move_dist", "flows": len(flows),
                "ibc": [[side, enc(bytes(k))] for side, k in ibc],
                "outside": enc(dp.keys_blob(outside)) if not flt.everything else None}))
            go_ms = None
            if lf and not ov:
                self._await_go(sock, r, timeout)
                go_ms = round((time.perf_counter() - t0) * 1e3, 2)
            t = {}
            if ll and lf:
                chunks = s.export_locked(flows, flt.text, scopes, slot, t)
            else:
                chunks = ops.export(self.nf, scopes, flt, stats=t)
            sent = peer.send_state(chunks, pipelined="pz" in opts)
            if lf and not op:
                peer.request("move_drain")           # ReleaseBuffer
            if token and not fired_at:
                fired_at = self._fire(token)        # the state is in (and released) at dst
            wire.write(sock, wire.encode_json({**sent, "export_s": t.get("export_s", 0.0), "held_s": held_s,
                                               "go_ms": go_ms, "fired_at": fired_at,
                                               "total_s": time.perf_counter() - t0}, wire.END))
        finally:
            peer.close()
        return None

    @staticmethod
    def _await_go(sock, r, timeout: float) -> None:
        """The controller's MovePerFlow on this connection: {"go": true}."""
        import select
        if not select.select([sock], [], [], timeout)[0]:
            raise BadInput(f"no MovePerFlow (go) from the controller within {timeout:g} s")
        h = r.header()
        if h is None:
            raise ConnectionError("the controller closed the connection before MovePerFlow")
        kind, length = h
        if kind != wire.JSON:
            r.skip(length)
            msg = None
        else:
            msg = r.body(kind, length)
        if not (isinstance(msg, dict) and msg.get("go") is True):
            raise BadInput(f"expected MovePerFlow ({{\"go\": true}}) after the hold, got {msg!r}")

    def er_after_put(self, chunks) -> None:
        """Early release: flows whose state just arrived may go (called after a put applied)."""
        s = self.session
        if s is None or not getattr(s, "er", False) or s.role != "dst":
            return
        keys = dp.flow_keys(chunks)[0]
        if keys:
            s.drain(keys)

