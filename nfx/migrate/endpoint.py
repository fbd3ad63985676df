"""What a move needs of one NF instance. `Local` works on the instance's pinned maps in this
process; the agent serves the same operations over the management network (nfx.agent), and
`nfx.agent.client` wraps them in the same shape."""
import time

from .. import layout as L
from ..state import ops
from ..state.filter import Filter
from ..state.tables import tables
from .session import MoveSession


class Local:
    def __init__(self, testbed_rec: dict, instance: str, nf):
        info = testbed_rec["nodes"][instance]
        self.name, self.nf = instance, nf
        self.ns, self.release_if = info["ns"], info.get("release_if")
        self.index = info.get("index", 0)
        self.peer_slots = info.get("peer_slots", {})
        self.session: MoveSession | None = None
        self.timing = {"export_s": 0.0, "import_s": 0.0}

    # ---- state ----
    def keys(self, flt: Filter) -> tuple[list, list]:
        """Flow keys of the selected per-flow state (every direction the NF keys on), and the
        keys return traffic carries on the outside (a NAT's public tuples; [] otherwise)."""
        flows, outside = [], []
        for c in ops.export(self.nf, ("per-flow",), flt):
            ks = list((L.FlowKey * c.count).from_buffer_copy(c.keys))
            flows += ks
            if c.table == "nat_rev":
                outside += ks
        return flows, outside

    def export(self, scopes, flt: Filter, chunk_entries: int = ops.CHUNK_ENTRIES, keys: list | None = None) -> list:
        t = {}
        keyset = {bytes(k) for k in keys} if keys is not None else None
        out = list(ops.export(self.nf, scopes, flt, chunk_entries, stats=t, keyset=keyset))
        self.timing["export_s"] += t.get("export_s", 0.0)
        return out

    def put(self, chunks) -> dict:
        t = {}
        r = ops.put(self.nf, chunks, stats=t)
        self.timing["import_s"] += t.get("import_s", 0.0)
        return r

    def delete(self, scopes, flt: Filter) -> dict:
        return ops.delete(self.nf, scopes, flt)

    def push(self, other: "Local", scopes, flt: Filter, pipelined: bool = True, on_chunk=None) -> dict:
        """DiST: state straight to the peer (in-process here; the agent sends it over TCP).
        pipelined: each chunk is applied as it comes, else all of them at the end."""
        n = nbytes = 0
        chunks = self.export(scopes, flt)
        groups = [[c] for c in chunks] if pipelined else [chunks]
        for g in groups:
            if not g:
                continue
            r = other.put(g)
            if r["failed"]:
                raise RuntimeError(f"{other.name} refused chunk {r['failed'][0]['seq']}: {r['failed'][0]['error']}")
            for c in g:
                n += 1
                nbytes += c.nbytes
                if on_chunk:
                    on_chunk(c)
        return {"chunks": n, "bytes": nbytes}

    # ---- the move session ----
    def begin(self, role: str, epoch: int, op: bool, keys: list, flt: Filter | None, peer: str | None = None,
              on_ctrl=None, er: bool = False) -> None:
        """er: early release happens through push's on_chunk here (the agent does it on put)."""
        slot = self.peer_slots.get(peer, 0) if peer else 0
        self.session = MoveSession(self.nf, self.ns, self.release_if, epoch, role, op, on_ctrl)
        self.session.begin(keys, flt.text if flt is not None else None, slot)

    def hold_new(self, flt: Filter, peer: str | None = None) -> None:
        self.session.hold_new(flt.text, self.peer_slots.get(peer, 0) if peer else 0)

    def mark(self, keys: list, peer: str | None = None) -> None:
        self.session.mark(keys, self.peer_slots.get(peer, 0) if peer else 0)

    def drain(self, keys: list | None = None) -> None:
        self.session.drain(keys)

    def inject(self, pkts: list) -> int:
        return self.session.inject(pkts)

    def cut_complete(self) -> bool:
        return self.session.cut_complete()

    def settled(self) -> bool:
        return self.session.settled()

    def passed_on(self) -> int:
        """Packets this instance has redirected or sent toward the controller, ever."""
        s = self.nf.stats()
        return s.get("r_redirected", 0) + s.get("r_to_ctrl", 0)

    def end(self) -> dict:
        st = self.session.end() if self.session else {}
        self.session = None
        return st

    def stats(self) -> dict:
        return self.nf.stats()


def wait_for(cond, timeout: float, what: str, poll: float = 0.002) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - t0
