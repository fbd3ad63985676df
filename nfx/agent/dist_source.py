"""DiST's source half (`move_dist`): the move run here, at the source, in the paper's order:
enableEvent (this agent begins the move at the destination's agent and holds the flows; "held"
acknowledges it), then MovePerFlow (the controller's "go": the state is pushed to dst directly
and released there; END acknowledges it). With `fire` it also sends the trigger that puts the
controller's armed rules in force on both switches (nfx/frames.py), over the data plane."""
import ctypes as ct
import select
import socket
import time
from types import SimpleNamespace

from ..errors import BadInput
from ..frames import trigger_frame
from ..movespec import GUARANTEES, ibc_keys, parse_data_link, parse_opts, spread_keys
from ..packets import flow_keys, keys_blob
from ..state import ops, wire
from ..filter import parse
from ..state.tables import SCOPES, tables
from . import late_locking
from .client import AgentClient
from .ops_move import enc


SAMPLE = 64        # per-flow entries read for the IBC's tuples when every flow moves


def _counted(chunks, moved: list):
    """The chunks, passed on; moved[0] counts their per-flow entries."""
    for c in chunks:
        if c.scope == "per-flow":
            moved[0] += c.count
        yield c


class DistSource:
    """Mixed into the agent (nfx/agent/server.py) with MoveOps (its sessions): needs the instance
    (nfx/agent/instance.py)."""

    _fire_socks: "dict[str, tuple[socket.socket, bytes]] | None" = None

    def _fire(self, token: int) -> float:
        """The trigger out of both sides, to the switch at the other end of each: the armed
        rules take force when it arrives. Returns when it was sent (perf_counter)."""
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

    def op_move_dist(self, sock, r, req) -> None:
        """DiST's move, run at the source, in the paper's order (Sec. 3.1). lf/op: the request
        is enableEvent(filter, drop, dst): begin the move at dst (it buffers) and here (redirect
        to dst), then the "held" frame acknowledges it. Then the controller's "go" frame is
        MovePerFlow: push the state to dst, ReleaseBuffer there (lf), and END acknowledges it.
        ng: the request is MovePerFlow itself ("held" says only that the push starts). ov: no
        "go" to wait for, the push follows the hold at once. fire: the token of rules the
        controller armed on the switches, fired from here once they may change (ov: on hold;
        else once the state is in at dst and, lf, released). data_delay_ms/data_rate_mbit put
        this agent's connection to dst behind an emulated data link (nfx/agent/link.py)."""
        dst, epoch, guarantee = req.get("dst"), int(req.get("epoch", 0)), req.get("guarantee", "lf")
        opts = parse_opts(",".join(req.get("opts") or []))
        if guarantee not in GUARANTEES or epoch <= 0 or not isinstance(dst, str):
            raise BadInput(f"move_dist needs dst, an epoch > 0 and a guarantee ({', '.join(GUARANTEES)})")
        flt = parse(req.get("filter"))
        scopes = tuple(req.get("scopes") or SCOPES)
        data_delay, data_rate = parse_data_link(req)
        self.peers()                         # an instance added since this agent started
        slot = self.peer_slots.get(dst)
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

        per_flow: list = []         # the per-flow chunks read for the keys: late locking's groups

        def keys():
            per_flow[:] = ops.export(self.nf, ("per-flow",), flt)
            return flow_keys(per_flow)
        # the hold needs the keys only to mark a partial filter's flows or to cut (op); otherwise
        # they are read once the filter holds every flow, off the way to the hold (and trigger)
        # want_keys: a spread testbed, where the filter also matches flows other instances hold
        # (dst's own among them): the move holds and cuts its flows by key, never by the filter
        spread = bool(req.get("want_keys"))
        keys_first = op or not flt.everything or spread
        # op on every flow: the hold needs one flow's tuples for the IBC, not every key (reading
        # and decoding them all made the held phase of a 100k-flow move 120 ms; sampled, 5 ms);
        # the count of what moved comes with the state instead
        sample = op and flt.everything and not spread and not ll and not req.get("cluster_inside")
        flows, outside = self._sample_keys() if sample else keys() if keys_first else ([], [])
        # spread: the flows' own keys, an IDS's both directions (movespec.spread_keys)
        explicit = spread_keys(flows, outside) if spread else [] if flt.everything else outside
        ibc = ibc_keys(flows, outside, flt) if op else []
        made_up = op and not any(bytes(k) == bytes(ibc[0][1]) for k in flows)     # no flow to take the cut from
        synth = []
        if made_up and (not flt.everything or spread):
            # a made-up cut (no flow matches yet): its outside tuple is marked and steered like
            # a public tuple (nfx/movespec.py ibc_synthetic)
            synth = [ibc[1][1]] + ([ibc[0][1]] if spread else [])
            outside = outside + synth
        peer = AgentClient(self.testbed, dst, ns=None, timeout=timeout, delay_ms=data_delay, rate_mbit=data_rate)
        try:
            if lf:
                # op: the switches cut only once the state is in, so dst drains at the cut itself
                peer.request("move_begin", role="dst", epoch=epoch, order=op,
                             keys=enc(keys_blob(explicit + synth)), filter=None if spread else flt.text,
                             er="er" in opts, drain_on_cut=op)
                s = self._begin_session("src-redirect", epoch, op, [] if ll else explicit,
                                        None if ll or spread else flt, slot)
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
                "ok": True, "op": "move_dist", "flows": None if sample else len(flows),
                "ibc": [[side, enc(bytes(k))] for side, k in ibc], "ibc_made_up": made_up,
                "outside": enc(keys_blob(outside)) if not flt.everything else None,
                # a spread testbed's switches are steered by the flows' own keys (every one)
                "keys": enc(keys_blob(explicit + synth)) if spread else None}))
            go_ms = None
            if lf and not ov:
                self._await_go(sock, r, timeout)
                go_ms = round((time.perf_counter() - t0) * 1e3, 2)
            t, moved = {}, [0]
            if req.get("cluster_inside") and not ll:
                sent = self.cluster_push(peer, flt)     # only the last batch: dst holds the rest
            else:
                pace = None
                if ll and lf:
                    # pc: each group's packets wait only for that group (Pace; its puts ack one by
                    # one, so it needs pz and er)
                    pace = late_locking.Pace(timeout) if {"pc", "pz", "er"} <= opts else None
                    chunks = late_locking.export_locked(s, per_flow, flt, scopes, slot, t, pace)
                    if pace:
                        chunks = pace.count(chunks)
                    exported = None
                else:
                    # a thread per table, as a push exports (the kernel's walks overlap on the CPUs)
                    chunks, exported = self.export_stream(scopes, flt)
                # pz without er: one streamed put (applied as it arrives, a worker per CPU);
                # er releases flows put by put, so it keeps one put per chunk
                try:
                    sent = peer.send_state(_counted(chunks, moved), pipelined="pz" in opts, streamed="er" not in opts,
                                           on_done=pace.done if pace else None)
                finally:
                    if exported is not None:
                        chunks.close()                      # its threads stop, however the put ended
                        t["export_s"] = exported["export_s"]
            if lf and not op:
                peer.request("move_drain")           # ReleaseBuffer
            if token and not fired_at:
                fired_at = self._fire(token)        # the state is in (and released) at dst
            wire.write(sock, wire.encode_json({**sent, "flows": moved[0] if sample else None,
                                               "export_s": t.get("export_s", 0.0), "held_s": held_s,
                                               "go_ms": go_ms, "fired_at": fired_at,
                                               "total_s": time.perf_counter() - t0}, wire.END))
        except BaseException:
            # the controller rolls back by ending both sessions; a source whose own step failed
            # (or whose controller is gone) must not keep this one: every later move would be
            # refused as "already in progress"
            if lf and self.session is not None and self.session.epoch == epoch:
                try:
                    self.session.end()
                finally:
                    self.session = None
            raise
        finally:
            peer.close()
        return None

    def _sample_keys(self) -> tuple[list, list]:
        """flow_keys of the first few entries of each per-flow table (the kernel's first batch):
        tuples of moved flows for the IBC when every flow moves."""
        firsts = []
        for t in tables(self.kind, ("per-flow",)):
            m = self.nf.maps[t.name]
            n, keys, _ = next(m.export_batches(SAMPLE), (0, None, None))
            if n:
                raw = bytes(memoryview(keys).cast("B")[:n * ct.sizeof(m.Key)])
                firsts.append(SimpleNamespace(scope="per-flow", table=t.name, keys=raw))
        return flow_keys(firsts)

    @staticmethod
    def _await_go(sock, r, timeout: float) -> None:
        """The controller's MovePerFlow on this connection: {"go": true}."""
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
