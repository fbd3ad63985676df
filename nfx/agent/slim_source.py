"""SLiM's source half (`move_slim`), after Nobach et al. (seeds/slim-statelets-summary.txt): the
source keeps processing the moving flows and mirrors what each packet does to their state as
statelets; it sends a snapshot, then the statelets, to the destination's agent over one ordered
connection (`slim_in`, nfx/agent/slim_dest.py), until the destination has caught up and the
controller has pointed the switches at it.

On this connection to the controller, in order:
    request   {op: move_slim, dst, epoch, guarantee, filter, scopes, timeout, ready_statelets, rt}
    JSON      {ok, flows, ibc, outside}            the flows mirror from now on
    JSON      {ready: {...}}                       relayed from dst: it has caught up
    (controller) {duplicating: true}               lf/op: the switches send the flows to both
    JSON      {caught_up: {...}}                   dst has applied what was sent until then
    (controller) {go: true}                        the switches point at dst (lf/op: after the
                                                   IBC on each side)
    END       the move's figures                   dst applied the last statelets (and, lf/op,
                                                   released what it held)
SLiM's mutual exclusion (lf/op): the IBC of each side is this source's cut. Packets before it are
processed here and mirrored; those after it are copies the destination has too (the switch
duplicates until phase 2), dropped by the gate (nfx_gate, a STATELET mark or filter after the
cut). Once both IBCs are in, the source sends what its statelet ring still holds, waits for its
egress rings to empty (op: its last packets leave before the destination's first) and ends the
stream; the destination holds the moving flows' packets until it has applied that.

A full statelet ring loses records (counted by the NF): the source then sends a fresh snapshot
(`resync`), which the destination installs in place of what it had of the filter, and goes on
with the statelets after it. Statelets are absolute and their replay idempotent, so the ring's
records from before the new snapshot only meet newer entries and change nothing. Records lost by
the cut (op) get one last fresh snapshot, exact since the source processes none of the flows past
its cut; lf and ng call the move off then."""
import select
import time

from ..errors import BadInput, NfxError
from ..filter import parse
from ..loader.ifstats import VethRing
from ..movespec import GUARANTEES, ibc_keys, parse_data_link
from ..packets import flow_keys, keys_blob
from ..state import ops, wire
from ..state.replay import sigma
from ..state.statelets import StateletReader, lost
from ..state.tables import SCOPES
from .client import AgentClient
from .prio import enter_rt, leave_rt
from .ops_move import enc
from .settle import settle

READY_STATELETS = 2000      # dst asks for the redirect when a batch had fewer statelets than this
POLL_MS = 1                 # the ring is read at least this often
SEND_EVERY_S = 0.001        # statelets go out at least this often,
SEND_RECORDS = 512          # or once this many records are in hand
DROP_CHECK_S = 0.02         # how often the NF's ring-full counter is read
EGRESS_WAIT_S = 0.05        # op: how long the cut waits for the egress rings to empty
MAX_RESYNCS = 8             # fresh snapshots after ring overflows before the move is called off


class SlimSource:
    """Mixed into the agent (nfx/agent/server.py) with MoveOps (its sessions) and SubscribeOps
    (its hubs): needs the instance (nfx/agent/instance.py)."""

    def op_move_slim(self, sock, r, req) -> None:
        dst, epoch, guarantee = req.get("dst"), int(req.get("epoch", 0)), req.get("guarantee", "lf")
        if guarantee not in GUARANTEES or epoch <= 0 or not isinstance(dst, str):
            raise BadInput(f"move_slim needs dst, an epoch > 0 and a guarantee ({', '.join(GUARANTEES)})")
        flt = parse(req.get("filter"))
        scopes = tuple(req.get("scopes") or SCOPES)
        timeout = float(req.get("timeout", 30))
        ready_statelets = int(req.get("ready_statelets") or READY_STATELETS)
        stall_s = float(req.get("stall_reader_ms") or 0) / 1e3
        rt = bool(req.get("rt"))
        if ready_statelets < 1:
            raise BadInput("ready_statelets must be at least 1")
        data_delay, data_rate = parse_data_link(req)
        if self.session is not None:
            raise BadInput(f"a move (epoch {self.session.epoch}) is already in progress here")
        hub = getattr(self, "hubs", {}).get("statelets")
        if hub is not None and hub.subs:
            raise BadInput(f"{self.instance}'s statelets are being watched (nfx inspect): a ring has one reader, "
                           "and a move needs every record; stop the inspector's statelet stream first")
        lf, op = guarantee in ("lf", "op"), guarantee == "op"
        t0 = time.perf_counter()
        flows, outside = flow_keys(ops.export(self.nf, ("per-flow",), flt))
        explicit = [] if flt.everything else outside
        ibc = ibc_keys(flows, outside, flt)
        if not flt.everything and not any(bytes(k) == bytes(ibc[0][1]) for k in flows):
            outside = outside + [ibc[1][1]]      # a made-up cut: steered like a public tuple (ibc_synthetic)
        reader = StateletReader(self.nf)
        reader.drain(idle_ms=0, timeout_s=1.0)  # records of no move of ours (an earlier one's) go
        peer = AgentClient.peer(self.testbed, dst, req.get("dst_at"), timeout=timeout, delay_ms=data_delay,
                                rate_mbit=data_rate)
        run = _Run(self, sock, r, peer, reader, lf, op, rt, timeout)
        run.got(req)                             # the controller's request
        try:
            stats0 = self.nf.stats()
            s = self._begin_session("src-slim", epoch, lf, explicit, flt, 0)
            settle(self.nf, time.perf_counter())  # a packet that read no mark has been processed
            peer._begin("slim_in", {"epoch": epoch, "guarantee": guarantee, "filter": flt.text,
                                    "scopes": list(scopes), "keys": keys_blob(explicit),
                                    "ready_statelets": ready_statelets, "rt": rt or None})
            run.got(peer._reply("slim_in"))
            run.ctl(sock, wire.encode_json({
                "ok": True, "op": "move_slim", "flows": len(flows),
                "ibc": [[side, enc(bytes(k))] for side, k in ibc],
                "outside": enc(keys_blob(outside)) if not flt.everything else None}))
            run.snapshot(scopes, flt)
            time.sleep(stall_s)                  # emulated: a reader that falls behind (the ring may overflow)
            run.stream(s)
            done = run.finish()
            st = sigma(self.nf, stats0)
            if not lf:
                self._end_own_session()
        except BaseException:
            if not lf and self.session is not None:
                self._end_own_session()
            raise
        finally:
            leave_rt()
            reader.close()
            peer.close()
            run.close()
        wire.write(sock, wire.encode_json({
            **run.figures, "sigma": st["sigma"], "statelet_ring_drops": st["dropped"],
            "dst": done, "applied_at": done.get("applied_at"), "total_s": time.perf_counter() - t0}, wire.END))
        return None

    def _end_own_session(self) -> None:
        s, self.session = self.session, None
        s.end()


class _Run:
    """One move_slim's stream: the snapshot, the statelets, the controller's and dst's frames."""

    def __init__(self, agent, sock, r, peer: AgentClient, reader: StateletReader, lf: bool, op: bool, rt: bool,
                 timeout: float):
        self.agent, self.nf, self.sock, self.r = agent, agent.nf, sock, r
        self.peer, self.reader, self.lf, self.op, self.timeout = peer, reader, lf, op, timeout
        self.t0 = time.perf_counter()
        self.figures = {"snapshot_chunks": 0, "snapshot_bytes": 0, "snapshot_entries": 0, "statelet_records": 0,
                        "statelet_bytes": 0, "resyncs": 0, "export_s": 0.0, "phases_ms": {},
                        "control_bytes": 0}
        self.ready = None
        self.rt = rt
        self.redirected = False
        self.dst_applied = 0          # records dst has said it applied
        self.dup_mark: int | None = None    # records sent when the switches began to duplicate
        self.caught_up = False
        self._egress: list[VethRing] = []

    def ctl(self, dst, parts: list) -> None:
        """A control frame, to dst's agent (dst None) or the controller, counted as control bytes."""
        self.figures["control_bytes"] += sum(len(p) for p in parts)
        if dst is None:
            self.peer._write(parts)
        else:
            wire.write(dst, parts)

    def got(self, obj) -> None:
        """A control frame that came in (its JSON, re-encoded to count its size)."""
        self.figures["control_bytes"] += sum(len(p) for p in wire.encode_json(obj if isinstance(obj, dict) else {}))

    def phase(self, name: str) -> None:
        self.figures["phases_ms"][name] = round((time.perf_counter() - self.t0) * 1e3, 2)

    def snapshot(self, scopes, flt) -> None:
        """The filter's state, exported now, to dst: installed in place of what it had of it."""
        self.drops0 = lost(self.nf.stats())
        t = {}
        n = 0
        for c in ops.export(self.nf, scopes, flt, stats=t):
            parts = wire.encode_chunk(c)
            self.peer._write(parts)
            self.figures["snapshot_bytes"] += c.nbytes
            self.figures["control_bytes"] += sum(len(p) for p in parts) - c.nbytes     # its frame's header
            self.figures["snapshot_entries"] += c.count
            n += 1
        self.ctl(None, wire.encode_json({"snapshot": n}))
        self.figures["snapshot_chunks"] += n
        self.figures["export_s"] += t.get("export_s", 0.0)
        self.phase("snapshot" if not self.figures["resyncs"] else f"resync{self.figures['resyncs']}")
        self._scopes, self._flt = scopes, flt

    def _send(self, recs: list) -> None:
        if recs:
            self.peer._write(wire.encode_statelets(recs))
            self.figures["control_bytes"] += wire.HDR.size
            self.figures["statelet_records"] += len(recs)
            self.figures["statelet_bytes"] += sum(len(x) for x in recs)

    def _frames(self) -> None:
        """dst's "ready" frames (the first relayed to the controller, then the first that covers
        what was sent when the switches duplicated: "caught_up"), and the controller's
        "duplicating" and "go", if they came."""
        while (fr := self.peer.read_frame(wait=0)) is not None:
            kind, obj = fr
            if kind == wire.ERROR:
                from_peer = obj.get("error") if isinstance(obj, dict) else obj
                raise NfxError(f"the destination gave up: {from_peer}")
            if not (kind == wire.JSON and isinstance(obj, dict) and "ready" in obj):
                raise NfxError(f"unexpected frame (kind {kind}) from the destination during the move")
            self.got(obj)
            self.dst_applied = max(self.dst_applied, int(obj["ready"].get("applied_records", 0)))
            if self.ready is None:
                self.ready = obj["ready"]
                self.phase("ready")
                self.ctl(self.sock, wire.encode_json({"ready": self.ready}))
        self._caught_up()
        while self.ready is not None and not self.redirected and select.select([self.sock], [], [], 0)[0]:
            h = self.r.header()
            if h is None:
                raise ConnectionError("the controller closed the connection during the move")
            msg = self.r.body(*h)
            self.got(msg)
            if h[0] == wire.JSON and isinstance(msg, dict) and msg.get("duplicating") is True and self.dup_mark is None:
                # dst's next "ready" that covers what was sent so far has every statelet of the
                # packets before the duplication: then the controller cuts
                self.dup_mark = self.figures["statelet_records"]
                self.phase("duplicating")
                if self.rt:
                    self.figures["rt"] = enter_rt()      # the cut and the last statelets: no waiting
                self._caught_up()
                continue
            if not (h[0] == wire.JSON and isinstance(msg, dict) and msg.get("go") is True):
                raise BadInput(f"expected {{\"duplicating\": true}} or {{\"go\": true}} from the controller, got {msg!r}")
            self.redirected = True
            self.phase("redirected")

    def _caught_up(self) -> None:
        if self.dup_mark is not None and not self.caught_up and self.dst_applied >= self.dup_mark:
            self.caught_up = True
            self.phase("caught_up")
            self.ctl(self.sock, wire.encode_json({"caught_up": {"applied_records": self.dst_applied}}))

    def stream(self, session) -> None:
        """Statelets until the cut (lf/op: both sides' IBCs in, which come after dst's "ready";
        ng: the controller's "go", then a quiet ring)."""
        if self.op:
            self._egress = [VethRing(i) for i in self.agent.wiring]
        deadline = time.monotonic() + self.timeout
        held, last_send = [], 0.0
        next_drop_check = 0.0
        quiet_since = None
        prev = time.monotonic()
        while True:
            recs = self.reader.poll_raw(POLL_MS)
            held += recs
            now = time.monotonic()
            self.figures["max_poll_gap_ms"] = max(self.figures.get("max_poll_gap_ms", 0), round((now - prev) * 1e3, 2))
            prev = now
            if len(held) >= SEND_RECORDS or (held and now - last_send >= SEND_EVERY_S):
                # a frame per poll would be a few records each: dst pays per frame, so gather
                self._send(held)
                held, last_send = [], now
            if now > deadline:
                raise TimeoutError(f"move_slim: no cut within {self.timeout:g} s "
                                   f"(ready: {self.ready is not None}, redirected: {self.redirected})")
            if now >= next_drop_check:
                next_drop_check = now + DROP_CHECK_S
                drops = lost(self.nf.stats())
                if drops > self.drops0:
                    # records are lost: a fresh snapshot replaces what dst has of the filter
                    if self.figures["resyncs"] >= MAX_RESYNCS:
                        raise NfxError(f"the statelet ring overflowed again after {MAX_RESYNCS} fresh snapshots: "
                                       "it fills faster than a snapshot goes out (a larger --statelet-ring-kib, "
                                       "or less traffic); the move is called off, the source keeps the flows")
                    self.figures["resyncs"] += 1
                    self._send(held)             # what was read before the fresh snapshot goes first
                    held = []
                    self.ctl(None, wire.encode_json({"resync": True, "dropped": drops - self.drops0}))
                    self.snapshot(self._scopes, self._flt)
            self._frames()
            if self.lf and self.ready is not None:
                # the IBCs follow the controller's phase 1: the cut needs no "go" to wait for
                if all(session.gate.move_state().ibc_switch):
                    self.phase("cut")
                    break
                continue
            if not self.redirected:
                continue
            if not self.lf:
                quiet_since = quiet_since or (now if not recs else None)
                if recs:
                    quiet_since = None
                elif now - quiet_since > 0.05:
                    break
        # the last statelets go at once (dst applies them while the egress rings empty)
        self._send(held + self.reader.drain(idle_ms=0, timeout_s=1.0))
        self.phase("sent")
        if self.op:
            self._egress_empty()
            self.phase("egress_empty")
        drops = lost(self.nf.stats())
        if drops > self.drops0:
            if not self.op:
                # lf/ng: the source may still process the flows after this, so no snapshot now is
                # the last word; dst cannot be trusted with this stream: the move is called off
                raise NfxError("the statelet ring overflowed at the cut: the move is called off (the source keeps "
                               "the flows)")
            # op: past its cut the source processes none of the flows (its gate drops them), so
            # their state here is final and a fresh snapshot of it is exact
            self.figures["resyncs"] += 1
            self.ctl(None, wire.encode_json({"resync": True, "dropped": drops - self.drops0, "at_cut": True}))
            self.snapshot(self._scopes, self._flt)

    def _egress_empty(self) -> None:
        """op: the last packets processed here have left the egress rings, so none of them meets
        a packet dst releases on the way out."""
        t_end = time.monotonic() + EGRESS_WAIT_S
        while any(e.fill() for e in self._egress) and time.monotonic() < t_end:
            time.sleep(0.0002)

    def finish(self) -> dict:
        """The last statelets are sent: END, then dst's figures once it applied them; and the
        controller's "go" (lf/op: sent once the switches point at dst alone)."""
        self.ctl(None, wire.encode_json({"records": self.figures["statelet_records"]}, wire.END))
        kind, obj = self.peer.read_frame()
        while kind == wire.JSON and isinstance(obj, dict) and "ready" in obj:
            self.got(obj)
            kind, obj = self.peer.read_frame()
        if kind == wire.ERROR:
            raise NfxError(f"the destination failed to apply the move: {obj.get('error') if isinstance(obj, dict) else obj}")
        if kind != wire.END:
            raise NfxError(f"unexpected frame kind {kind} from the destination at the end of the move")
        self.got(obj)          # dst's figures: counted, though they are the move's report as much as control
        self.phase("applied")
        if not self.redirected:
            if not select.select([self.sock], [], [], self.timeout)[0]:
                raise TimeoutError(f"no \"go\" from the controller within {self.timeout:g} s of the cut")
            self._frames()
        return obj

    def close(self) -> None:
        for e in self._egress:
            e.close()
