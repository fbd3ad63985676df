"""The duplication baseline's source half (`move_dup_push`, nfx/migrate/dup.py): once the
switches duplicate the flows and this source's cut is in (the switch's IBC on both sides: every
packet that came before the duplication is processed), its snapshot: the state read here, this
source's held copies let go (they are processed for real, in order, after the state was read),
then the state pushed to the destination's agent directly and released there (its copies are
then processed in shadow). Without a move session here (ng) the state is read as it is."""
import time

from ..errors import BadInput
from ..filter import parse
from ..movespec import parse_data_link, parse_opts
from ..state import ops
from ..state.tables import SCOPES
from .client import AgentClient


class DupSource:
    """Mixed into the agent (nfx/agent/server.py) with MoveOps (its session)."""

    def op_move_dup_go(self, sock, r, req) -> dict:
        """dup op, at the destination: the source's last output has left, its own packets may go."""
        s = self.session
        if s is None or not (s.dup and s.role == "dst"):
            raise BadInput("no dup move's destination here")
        held = s.hold_own
        s.release_own()
        return {"released_own": held}

    def op_move_dup_push(self, sock, r, req) -> dict:
        dst, epoch = req.get("dst"), int(req.get("epoch", 0))
        if epoch <= 0 or not isinstance(dst, str):
            raise BadInput("move_dup_push needs dst and an epoch > 0")
        flt = parse(req.get("filter"))
        scopes = tuple(req.get("scopes") or SCOPES)
        opts = parse_opts(",".join(req.get("opts") or []))
        data_delay, data_rate = parse_data_link(req)
        timeout = float(req.get("timeout", 30))
        s = self.session
        if s is not None and (s.role != "src-dup" or s.epoch != epoch):
            raise BadInput(f"the move here (epoch {s.epoch}, {s.role}) is not dup move {epoch}'s source")
        t0 = time.perf_counter()
        # the controller sends this right behind its IBCs: the cut is waited for here, no
        # control round trip between the two
        while s is not None and not s.cut_complete():
            if s.error is not None:
                raise BadInput(f"the source's ring consumer failed: {s.error!r}")
            if time.perf_counter() - t0 > timeout:
                raise BadInput(f"the source's cut did not come within {timeout:g} s: the switch's IBC "
                               f"has not arrived on both sides ({s.ibc_switch})")
            time.sleep(0.0005)
        cut_at = time.perf_counter()
        t: dict = {}
        # all of it read before the held copies go: they change the state
        chunks = list(ops.export(self.nf, scopes, flt, stats=t))
        read_at = time.perf_counter()
        if s is not None:
            s.drain()
        released_at = time.perf_counter()
        peer = AgentClient.peer(self.testbed, dst, req.get("dst_at"), timeout=timeout, delay_ms=data_delay,
                                rate_mbit=data_rate)
        try:
            sent = peer.send_state(iter(chunks), pipelined="pz" in opts)
            peer.request("move_drain")              # the destination processes its copies in shadow
        finally:
            peer.close()
        return {**sent, "export_s": t.get("export_s", 0.0), "cut_at": cut_at if s is not None else None,
                "read_ms": round((read_at - t0) * 1e3, 2),
                "drain_ms": round((released_at - t0) * 1e3, 2), "total_s": time.perf_counter() - t0}
