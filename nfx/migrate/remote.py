"""A move endpoint served by the instance's agent over the management network: the same
operations as endpoint.Local, as agent requests (nfx/agent/moves.py, nfx/agent/PROTOCOL.md).
Each endpoint keeps two connections: one for requests, one for the TO_CTRL packet stream."""
import threading

from ..agent.client import AgentClient
from ..agent.moves import enc
from ..state.filter import Filter
from . import dataplane as dp


class Remote:
    def __init__(self, testbed_rec: dict, instance: str, delay_ms: float = 0.0, timeout: float = 60.0):
        info = testbed_rec["nodes"][instance]
        self.name = instance
        self.testbed = testbed_rec["name"]
        self.index = info.get("index", 0)
        self.peer_slots = info.get("peer_slots", {})
        self.delay_ms = delay_ms
        self.c = AgentClient(self.testbed, instance, delay_ms=delay_ms, timeout=timeout)
        self.timing = {"export_s": 0.0, "import_s": 0.0}
        self.session = None
        self._ctrl_thread = None
        self.lock = threading.Lock()          # one request at a time on the request connection

    def close(self):
        self.c.close()

    def _req(self, name, **args) -> dict:
        with self.lock:
            return self.c.request(name, **args)

    # ---- state ----
    def keys(self, flt: Filter) -> tuple[list, list]:
        flows, outside = [], []
        with self.lock:
            for c in self.c.iter_get(scopes=["per-flow"], filter=flt.text):
                ks = dp.keys_from_blob(bytes(c.keys))
                flows += ks
                if c.table == "nat_rev":
                    outside += ks
        return flows, outside

    def export(self, scopes, flt: Filter, chunk_entries=None, keys: list | None = None) -> list:
        head = {}
        with self.lock:
            if keys is None:
                out = list(self.c.iter_get(scopes=list(scopes), filter=flt.text, head=head))
            else:
                self.c._begin("move_get", {"keys": enc(dp.keys_blob(keys)), "scopes": list(scopes),
                                           "filter": flt.text})
                head = self.c._reply("move_get")
                out = []
                while True:
                    kind, obj = self.c._frame()
                    if kind == 2:
                        out.append(obj)
                    else:
                        break
        self.timing["export_s"] += head.get("export_s") or 0.0
        return out

    def put(self, chunks) -> dict:
        with self.lock:
            r = self.c.put(chunks)
        self.timing["import_s"] += r.get("apply_s") or 0.0
        return r

    def delete(self, scopes, flt: Filter) -> dict:
        return self._req("del", scopes=list(scopes), filter=flt.text)

    def push(self, other: "Remote", scopes, flt: Filter, pipelined: bool = True, on_chunk=None) -> dict:
        """DiST: this agent sends the state straight to the other agent."""
        r = self._req("push", to=other.name, scopes=list(scopes), filter=flt.text, timeout=120)
        self.timing["export_s"] += r.get("export_s") or 0.0
        other.timing["import_s"] += r.get("apply_s") or r.get("peer_apply_s") or 0.0
        return {"chunks": r.get("chunks", 0), "bytes": r.get("bytes", 0)}

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
        """The packets src sends up, over their own connection (and the control channel's delay)."""
        c = AgentClient(self.testbed, self.name, delay_ms=self.delay_ms, timeout=3600)
        try:
            c._begin("move_ctrl", {})
            c._reply("move_ctrl")
            while True:
                kind, obj = c._frame(first=True)      # each batch crosses the control channel
                if kind != 1:
                    break
                on_ctrl(dp.unpack(__import__("base64").b64decode(obj["packets"])))
        finally:
            c.close()

    def hold_new(self, flt: Filter, peer: str | None = None) -> None:
        self._req("move_hold_new", filter=flt.text, peer=self.peer_slots.get(peer, 0) if peer else 0)

    def mark(self, keys: list, peer: str | None = None) -> None:
        self._req("move_mark", keys=enc(dp.keys_blob(keys)), peer=self.peer_slots.get(peer, 0) if peer else 0)

    def drain(self, keys: list | None = None) -> None:
        self._req("move_drain", keys=enc(dp.keys_blob(keys)) if keys is not None else None)

    INJECT_BYTES = 512 << 10      # well under the agent's 1 MiB request limit once base64'd

    def inject(self, pkts: list) -> int:
        n, batch, size = 0, [], 0
        for p in pkts:
            if batch and size + len(p.data) + dp.HDR > self.INJECT_BYTES:
                n += self._req("move_inject", packets=enc(dp.pack(batch)))["injected"]
                batch, size = [], 0
            batch.append(p)
            size += len(p.data) + dp.HDR
        if batch:
            n += self._req("move_inject", packets=enc(dp.pack(batch)))["injected"]
        return n

    def cut_complete(self) -> bool:
        return self._req("move_status")["cut_complete"]

    def settled(self) -> bool:
        return self._req("move_status")["settled"]

    def passed_on(self) -> int:
        s = self._req("stats")["stats"]
        return s.get("r_redirected", 0) + s.get("r_to_ctrl", 0)

    def end(self) -> dict:
        st = self._req("move_end")["stats"]
        self.session = None
        if self._ctrl_thread:
            self._ctrl_thread.join(timeout=5)
            self._ctrl_thread = None
        return st

    def force_end(self) -> None:
        """The agent is gone: undo the move's marks, filter and settings straight through the
        instance's pins, so its dataplane stops holding or passing the flows on."""
        from ..testbed import builder
        nf = builder.instance(self.testbed, self.name)
        from .session import FILTER_SLOT
        dp.clear_filter(nf, FILTER_SLOT)
        dp.clear_marks(nf)
        nf.maps["nfx_drain"].clear()
        dp.reset_move(nf)
        self.session = None

    def stats(self) -> dict:
        return self._req("stats")["stats"]
