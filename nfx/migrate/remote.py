"""A move endpoint: one NF instance, through its agent over the management network (the
requests are in nfx/agent/moves.py and nfx/agent/PROTOCOL.md).
Each endpoint keeps up to three connections: requests, the TO_CTRL packet stream, packet-outs."""
import base64
import threading

from ..agent.client import AgentClient
from ..agent.moves import enc
from ..agent.protocol import raise_error
from ..errors import NfxError, Timeout
from ..state import wire
from ..state.filter import Filter
from . import dataplane as dp


class Remote:
    def __init__(self, testbed_rec: dict, instance: str, delay_ms: float = 0.0, rate_mbit: float = 0.0,
                 timeout: float = 60.0):
        info = testbed_rec["nodes"][instance]
        self.name = instance
        self.testbed = testbed_rec["name"]
        self.index = info.get("index", 0)
        self.peer_slots = info.get("peer_slots", {})
        self.delay_ms, self.rate_mbit = delay_ms, rate_mbit
        self.c = AgentClient(self.testbed, instance, delay_ms=delay_ms, rate_mbit=rate_mbit, timeout=timeout)
        self.timing = {"export_s": 0.0, "import_s": 0.0}
        self.session = None
        self._ctrl_thread = None
        self.ctrl_error: Exception | None = None
        self._inject_c: AgentClient | None = None
        self._inject_lock = threading.Lock()
        self.lock = threading.Lock()          # one request at a time on the request connection

    def close(self):
        self.c.close()
        if self._inject_c is not None:
            self._inject_c.close()

    def _req(self, name, **args) -> dict:
        with self.lock:
            return self.c.request(name, **args)

    # ---- state ----
    def keys(self, flt: Filter) -> tuple[list, list]:
        with self.lock:
            return dp.flow_keys(self.c.iter_get(scopes=["per-flow"], filter=flt.text))

    def export(self, scopes, flt: Filter, ll: bool = False, peer: str | None = None):
        """The state, chunk by chunk as it arrives: everything `flt` selects, with late locking
        if `ll` (the source marks flows group by group as it reads them)."""
        with self.lock:
            args = {"scopes": list(scopes), "filter": flt.text}
            if ll:
                args.update(ll=True, peer=self.peer_slots.get(peer, 0) if peer else 0)
            self.c._begin("move_get", args)
            self.c._reply("move_get")
            try:
                yield from self._chunks()
            except GeneratorExit:
                self.c.close()            # left mid-stream: the connection is out of step
                raise

    def _chunks(self):
        while True:
            kind, obj = self.c._frame()
            if kind == wire.CHUNK:
                yield obj
            elif kind == wire.END:
                self.timing["export_s"] += obj.get("export_s") or 0.0
                return
            elif kind == wire.ERROR:
                raise_error(obj, f"{self.name}: ")
            else:
                self.c.close()
                raise NfxError(f"unexpected frame kind {kind} in {self.name}'s state stream")

    def send_state(self, chunks, pipelined: bool, on_done=None) -> dict:
        """The state to this instance (AgentClient.send_state), counting its import time."""
        with self.lock:
            r = self.c.send_state(chunks, pipelined, on_done)
        self.timing["import_s"] += r["import_s"]
        return r

    def delete(self, scopes, flt: Filter) -> dict:
        return self._req("del", scopes=list(scopes), filter=flt.text)

    def move_dist(self, dst: "Remote", epoch: int, guarantee: str, opts, flt: Filter, scopes,
                  timeout: float, fire: int = 0, data_link=(0.0, 0.0)) -> "DistRun":
        """DiST's move, run by this (source) agent: see nfx/agent/moves.py op_move_dist. fire:
        the token of rules armed on the switches, for the agent to fire once it may. data_link:
        (delay ms, rate Mbit/s) of the emulated link the agent sends to dst over."""
        self.lock.acquire()
        try:
            args = {"dst": dst.name, "epoch": epoch, "guarantee": guarantee, "opts": sorted(opts),
                    "filter": flt.text, "scopes": list(scopes), "timeout": timeout,
                    "data_delay_ms": data_link[0] or None, "data_rate_mbit": data_link[1] or None}
            if fire:
                args["fire"] = f"{fire:x}"
            self.c._begin("move_dist", args)
        except BaseException:
            self.lock.release()
            raise
        if guarantee != "ng":
            self.session = dst.session = True
        return DistRun(self, dst)

    # ---- the move session ----
    def begin(self, role: str, epoch: int, op: bool, keys: list, flt: Filter | None, peer: str | None = None,
              on_ctrl=None, er: bool = False) -> None:
        slot = self.peer_slots.get(peer, 0) if peer else 0
        self._req("move_begin", role=role, epoch=epoch, order=op, keys=enc(dp.keys_blob(keys)),
                  filter=flt.text if flt is not None else None, peer=slot, er=er)
        self.session = True
        if role == "src-ctrl" and on_ctrl is not None:
            self._ctrl_thread = threading.Thread(target=self._ctrl_stream, args=(on_ctrl,), daemon=True)
            self._ctrl_thread.start()

    def _ctrl_stream(self, on_ctrl) -> None:
        """The packets src sends up, over their own connection (through the control link)."""
        c = AgentClient(self.testbed, self.name, delay_ms=self.delay_ms, rate_mbit=self.rate_mbit, timeout=3600)
        try:
            c._begin("move_ctrl", {})
            c._reply("move_ctrl")
            while True:
                kind, obj = c._frame()
                if kind != wire.JSON:
                    break
                on_ctrl(dp.unpack(base64.b64decode(obj["packets"])))
        except Exception as e:
            self.ctrl_error = e
        finally:
            c.close()

    def drain(self, keys: list | None = None) -> None:
        self._req("move_drain", keys=enc(dp.keys_blob(keys)) if keys is not None else None)

    INJECT_BYTES = 512 << 10      # well under the agent's 1 MiB request limit once base64'd

    def inject(self, pkts: list) -> int:
        """Packets for this instance to process (the controller's packet-outs), on a connection of
        their own so they do not wait behind state requests."""
        with self._inject_lock:
            if self._inject_c is None:
                self._inject_c = AgentClient(self.testbed, self.name, delay_ms=self.delay_ms,
                                             rate_mbit=self.rate_mbit, timeout=self.c.timeout)
            n, batch, size = 0, [], 0
            for p in pkts:
                if batch and size + len(p.data) + dp.HDR > self.INJECT_BYTES:
                    n += self._inject_c.request("move_inject", packets=enc(dp.pack(batch)))["injected"]
                    batch, size = [], 0
                batch.append(p)
                size += len(p.data) + dp.HDR
            if batch:
                n += self._inject_c.request("move_inject", packets=enc(dp.pack(batch)))["injected"]
            return n

    def cut_complete(self) -> bool:
        return self._req("move_status")["cut_complete"]

    def settled(self) -> bool:
        return self._req("move_status")["settled"]

    def unsettled(self) -> dict:
        """What keeps this destination from settling (for an error message)."""
        return self._req("move_status", why=True).get("unsettled") or {}

    def passed_on(self) -> int:
        s = self._req("stats")["stats"]
        return s.get("r_redirected", 0) + s.get("r_to_ctrl", 0)

    def end(self, timeout: float = 30.0) -> dict:
        """End the move here; a TO_CTRL source's stream has then handed over all it had."""
        st = self._req("move_end")["stats"]
        self.session = None
        if self._ctrl_thread:
            self._ctrl_thread.join(timeout=timeout)
            alive = self._ctrl_thread.is_alive()
            self._ctrl_thread = None
            if alive:
                raise Timeout(f"{self.name}'s packets toward the controller did not all arrive within {timeout:g} s")
            if self.ctrl_error is not None:
                raise NfxError(f"{self.name}'s packet stream toward the controller broke: {self.ctrl_error}")
        return st

    def force_end(self) -> None:
        """The agent is gone: undo the move's marks, filter and settings straight through the
        instance's pins, so its dataplane stops holding or passing the flows on."""
        from ..testbed import builder
        nf = builder.instance(self.testbed, self.name)
        from .session import FILTER_SLOT
        dp.clear_filter(nf, FILTER_SLOT)
        dp.clear_marks(nf)
        dp.Gate(nf).clear_drain()
        dp.reset_move(nf)
        self.session = None

    def force_delete(self, scopes, flt: Filter) -> None:
        """The agent is gone: delete the state straight through the instance's pins."""
        from ..state import ops
        from ..testbed import builder
        ops.delete(builder.instance(self.testbed, self.name), scopes, flt)

    def stats(self) -> dict:
        return self._req("stats")["stats"]


class DistRun:
    """A move_dist in flight on the source's request connection (held until done() or close())."""

    def __init__(self, src: Remote, dst: Remote):
        self.src, self.dst = src, dst
        self.open = True

    def _next(self, want: int) -> dict:
        try:
            kind, obj = self.src.c._frame()
            if kind == wire.ERROR:
                raise_error(obj, f"{self.src.name}: ")
            if kind != want:
                self.src.c.close()
                raise NfxError(f"unexpected frame kind {kind} from {self.src.name} during a move")
            return obj
        except BaseException:
            self.close()
            raise

    def held(self) -> dict:
        """The flows are held: their count, the IBC keys (op) and outside keys (a partial filter)."""
        r = self._next(wire.JSON)
        r["ibc"] = [(side, dp.keys_from_blob(base64.b64decode(k))[0]) for side, k in r.get("ibc") or []]
        r["outside"] = dp.keys_from_blob(base64.b64decode(r["outside"])) if r.get("outside") else []
        return r

    def go(self) -> None:
        """MovePerFlow, after the "held" answer (enableEvent's ack): the source starts the push."""
        try:
            self.src.c._write(wire.encode_json({"go": True}))
        except BaseException:
            self.close()
            raise

    def done(self) -> dict:
        """The state is in at dst: the transfer's figures."""
        r = self._next(wire.END)
        self.src.timing["export_s"] += r.get("export_s") or 0.0
        self.dst.timing["import_s"] += r.get("import_s") or 0.0
        self.close()
        return r

    def close(self) -> None:
        if self.open:
            self.open = False
            self.src.lock.release()
