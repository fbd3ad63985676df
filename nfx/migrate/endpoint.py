"""A move endpoint: one NF instance, through its agent over the management network (the
requests are the agent's move ops, nfx/agent/PROTOCOL.md), by AgentClient's public calls.
Each endpoint keeps up to three connections: requests, the TO_CTRL packet stream, packet-outs."""
import base64
import threading
from pathlib import Path

from ..agent.client import AgentClient, DistStream, nf_node
from ..errors import NfxError, Timeout
from ..state import ops, wire
from ..filter import Filter
from ..nfs import nf_class
from ..gate import Gate
from .. import packets as pk
from ..agent.sessions import FILTER_SLOT


def force_end(info: dict, instance: str) -> None:
    """A move's marks, filter and settings at `instance` (its registry node `info`) undone
    straight through its pins: for an instance whose agent is gone."""
    gate = Gate(nf_class(info["kind"]).open(instance, Path(info["pin"])))
    gate.clear_filter(FILTER_SLOT)
    gate.unmark()
    gate.clear_drain()
    gate.reset_move()


def end_session(rec: dict, instance: str) -> None:
    """End whatever move session `instance` has, through its agent, or through its pins if the
    agent does not answer."""
    try:
        c = AgentClient.for_node(nf_node(rec, instance), rec.get("token"), rec["mgmt"]["ns"], timeout=5)
        try:
            c.request("move_end")
        finally:
            c.close()
    except Exception:
        force_end(rec["nodes"][instance], instance)


class Remote:
    def __init__(self, testbed_rec: dict, instance: str, delay_ms: float = 0.0, rate_mbit: float = 0.0,
                 timeout: float = 60.0, named: str | None = None, via_ns: str | None = None):
        """`testbed_rec`: the registry's record, read once by the caller for the whole move.
        An instance a joined testbed lends (nfx/testbed/lend.py) is `named` as the controller's
        switches know it (nf1@B) and reached from the controller's own management netns
        (`via_ns`), over the routed link, as from another machine."""
        self.node = nf_node(testbed_rec, instance)
        self.info = testbed_rec["nodes"][instance]
        self.instance = instance
        self.name = named or instance
        self.testbed = testbed_rec["name"]
        self.index = self.node["index"]
        self.peer_slots = self.node["peer_slots"]
        self.token, self.mgmt_ns = testbed_rec.get("token"), via_ns or testbed_rec["mgmt"]["ns"]
        self.at: dict | None = None     # set when the other end is in another testbed (address())
        self.delay_ms, self.rate_mbit = delay_ms, rate_mbit
        self.c = self._client(timeout)
        self.timing = {"export_s": 0.0, "import_s": 0.0}
        self.session = None
        self._ctrl_thread = None
        self.ctrl_error: Exception | None = None
        self._inject_c: AgentClient | None = None
        self._inject_lock = threading.Lock()
        self.lock = threading.Lock()          # one request at a time on the request connection
        # its cluster (issue 13), and whether the cluster's members share their state in batches
        self.cluster = next((c for c, ms in testbed_rec.clusters_in_force().items() if instance in ms), None)
        self.shares = bool(testbed_rec.get("sharing")) and self.cluster is not None
        # the switches spread flows over the instances: a move steers its own flows, by key
        self.spread = bool(testbed_rec.get("spread"))
        self.queues = int(testbed_rec.get("queues") or 1)      # rx/tx queues a data-plane veth

    def address(self) -> dict:
        """Where this agent is, for a source agent in another testbed (AgentClient.peer)."""
        return {"testbed": self.testbed, "name": self.instance, "agent_addr": self.node["agent_addr"],
                "agent_port": self.node["agent_port"], "token": self.token}

    def _client(self, timeout: float) -> AgentClient:
        """Another connection to this agent, behind the move's control link."""
        return AgentClient.for_node(self.node, self.token, self.mgmt_ns, timeout=timeout,
                                    delay_ms=self.delay_ms, rate_mbit=self.rate_mbit)

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
            return pk.flow_keys(self.c.iter_get(scopes=["per-flow"], filter=flt.text))

    def export(self, scopes, flt: Filter, ll: bool = False, peer: str | None = None):
        """The state, chunk by chunk as it arrives: everything `flt` selects, with late locking
        if `ll` (the source marks flows group by group as it reads them)."""
        with self.lock:
            head: dict = {}
            yield from self.c.move_get(scopes, flt.text, ll=ll, peer=self.peer_slots.get(peer, 0) if peer else 0,
                                       head=head)
            self.timing["export_s"] += head["end"].get("export_s") or 0.0

    def send_state(self, chunks, pipelined: bool, on_done=None) -> dict:
        """The state to this instance (AgentClient.send_state), counting its import time."""
        with self.lock:
            r = self.c.send_state(chunks, pipelined, on_done)
        self.timing["import_s"] += r["import_s"]
        return r

    def share_flush(self, flt: Filter) -> dict:
        """Batched sharing: every pending batch to the cluster's members now (nfx/agent/sharer.py),
        and the keys (base64) of the flows `flt` selects here."""
        return self._req("share_flush", filter=flt.text)

    def replica_promote(self, flt: Filter, src: str, keys: str | None = None) -> dict:
        """The flows `flt` selects (among `keys`, base64, if given), from this member's replicas
        of `src` into its maps."""
        r = self._req("replica_promote", filter=flt.text, src=src, keys=keys)
        self.timing["import_s"] += r.get("apply_s") or 0.0
        return r

    def delete(self, scopes, flt: Filter, keys: list | None = None, forget: bool = False) -> dict:
        """The state `flt` selects; with `keys` (a spread testbed's move) those flows' only;
        `forget`: they left this instance's cluster, its members drop their replicas of them."""
        return self._req("del", scopes=list(scopes), filter=flt.text,
                         keys=None if keys is None else pk.keys_blob(keys), forget=forget)

    def move_dist(self, dst: "Remote", epoch: int, guarantee: str, opts, flt: Filter, scopes,
                  timeout: float, fire: int = 0, data_link=(0.0, 0.0), cluster_inside: bool = False) -> "DistRun":
        """DiST's move, run by this (source) agent (AgentClient.move_dist). fire: the token of
        rules armed on the switches, for the agent to fire once it may. data_link: (delay ms,
        rate Mbit/s) of the emulated link the agent sends to dst over."""
        return self._run(dst, guarantee, lambda: self.c.move_dist(
            dst.name, epoch, guarantee, opts, flt.text, scopes, timeout, fire, data_link[0], data_link[1],
            cluster_inside, self.spread))

    def move_slim(self, dst: "Remote", epoch: int, guarantee: str, flt: Filter, scopes, timeout: float,
                  ready_statelets: int = 0, data_link=(0.0, 0.0), stall_reader_ms: float = 0.0,
                  rt: bool = False) -> "DistRun":
        """SLiM's move, run by this (source) agent (AgentClient.move_slim): held() says the flows
        mirror, ready() that dst has caught up, go() that the switches point at dst, done()
        that dst applied the last statelets."""
        return self._run(dst, guarantee, lambda: self.c.move_slim(
            dst.name, epoch, guarantee, flt.text, scopes, timeout, ready_statelets, data_link[0], data_link[1],
            stall_reader_ms, rt, dst.at))

    def _run(self, dst: "Remote", guarantee: str, open_stream) -> "DistRun":
        """A move the source's agent runs on this client's connection, which it holds (the lock)
        until the DistRun is closed; both instances take part in a session unless ng."""
        self.lock.acquire()
        try:
            stream = open_stream()
        except BaseException:
            self.lock.release()
            raise
        if guarantee != "ng":
            self.session = dst.session = True
        return DistRun(self, dst, stream)

    # ---- the move session ----
    def begin(self, role: str, epoch: int, op: bool, keys: list, flt: Filter | None, peer: str | None = None,
              on_ctrl=None, er: bool = False, dup: bool = False, hold_own: bool = False) -> None:
        slot = self.peer_slots.get(peer, 0) if peer else 0
        self._req("move_begin", role=role, epoch=epoch, order=op, keys=pk.keys_blob(keys),
                  filter=flt.text if flt is not None else None, peer=slot, er=er,
                  **({"dup": True} if dup else {}), **({"hold_own": True} if hold_own else {}))
        self.session = True
        if role == "src-ctrl" and on_ctrl is not None:
            self._ctrl_thread = threading.Thread(target=self._ctrl_stream, args=(on_ctrl,), daemon=True)
            self._ctrl_thread.start()

    def _ctrl_stream(self, on_ctrl) -> None:
        """The packets src sends up, over their own connection (through the control link)."""
        c = self._client(3600)
        try:
            for blob in c.move_ctrl():
                on_ctrl(pk.unpack(blob))
        except Exception as e:
            self.ctrl_error = e
        finally:
            c.close()

    def drain(self, keys: list | None = None) -> None:
        self._req("move_drain", keys=pk.keys_blob(keys) if keys is not None else None)

    INJECT_BYTES = 512 << 10      # well under the agent's 1 MiB request limit once base64'd

    def inject(self, pkts: list) -> int:
        """Packets for this instance to process (the controller's packet-outs), on a connection of
        their own so they do not wait behind state requests."""
        with self._inject_lock:
            if self._inject_c is None:
                self._inject_c = self._client(self.c.timeout)
            n, batch, size = 0, [], 0
            for p in pkts:
                if batch and size + len(p.data) + pk.HDR > self.INJECT_BYTES:
                    n += self._inject_c.request("move_inject", packets=pk.pack(batch))["injected"]
                    batch, size = [], 0
                batch.append(p)
                size += len(p.data) + pk.HDR
            if batch:
                n += self._inject_c.request("move_inject", packets=pk.pack(batch))["injected"]
            return n

    def cut_complete(self) -> bool:
        return self._req("move_status")["cut_complete"]

    def final_cut(self) -> bool:
        """dup's destination: the untagged IBC after the repoint is in on both sides."""
        return self._req("move_status")["final_cut"]

    def egress_fill(self) -> int:
        """dup's source: frames it has output that its next hops have not taken yet."""
        return self._req("move_status")["egress_fill"]

    def dup_go(self) -> None:
        """dup op, the destination: its own packets may go (the source's last output has left)."""
        self._req("move_dup_go")

    def move_stats(self) -> dict:
        """The move session's figures so far (buffered, released, buffer_peak, max_hold_us...)."""
        return self._req("move_status")["stats"]

    def dup_push(self, dst: "Remote", epoch: int, flt: Filter, scopes, opts, timeout: float,
                 data_link=(0.0, 0.0)) -> dict:
        """dup: this source's snapshot to dst (nfx/agent/dup_source.py), over the data link;
        its held copies go meanwhile. Returns {chunks, bytes, import_s, applied_at, export_s, ...}."""
        r = self._req("move_dup_push", dst=dst.name, dst_at=dst.at, epoch=epoch, filter=flt.text, scopes=list(scopes),
                      opts=sorted(opts), timeout=timeout, data_delay_ms=data_link[0] or None,
                      data_rate_mbit=data_link[1] or None)
        self.timing["export_s"] += r.get("export_s") or 0.0
        dst.timing["import_s"] += r.get("import_s") or 0.0
        return r

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

    def _open(self):
        """The instance straight through its pins (its agent is gone)."""
        return nf_class(self.info["kind"]).open(self.instance, Path(self.info["pin"]))

    def force_end(self) -> None:
        """The agent is gone: undo the move's marks, filter and settings straight through the
        instance's pins, so its dataplane stops holding or passing the flows on."""
        force_end(self.info, self.instance)
        self.session = None

    def force_delete(self, scopes, flt: Filter, keys: list | None = None) -> None:
        """The agent is gone: delete the state straight through the instance's pins (with `keys`,
        those flows' only)."""
        ops.delete(self._open(), scopes, flt, None if keys is None else {bytes(k) for k in keys})

    def stats(self) -> dict:
        return self._req("stats")["stats"]


class DistRun:
    """A move_dist in flight on the source's request connection, which it holds until close()
    (always, in a finally): the agent's answers decoded, the transfer's times counted."""

    def __init__(self, src: Remote, dst: Remote, stream: DistStream):
        self.src, self.dst, self.stream = src, dst, stream
        self.open = True

    def held(self) -> dict:
        """The flows are held: their count, the IBC keys (op) and outside keys (a partial filter)."""
        r = self.stream.held()
        r["ibc"] = [(side, pk.keys_from_blob(base64.b64decode(k))[0]) for side, k in r.get("ibc") or []]
        r["outside"] = pk.keys_from_blob(base64.b64decode(r["outside"])) if r.get("outside") else []
        r["keys"] = pk.keys_from_blob(base64.b64decode(r["keys"])) if r.get("keys") else None
        return r

    def ready(self) -> dict:
        """SLiM: dst has caught up with the statelets (its answer, relayed by the source)."""
        return self.stream.held()["ready"]

    def send(self, obj: dict) -> None:
        """SLiM: a control frame to the source ({"duplicating": true})."""
        self.stream.ch.write(wire.encode_json(obj))

    def caught_up(self) -> dict:
        """SLiM: dst has applied what the source sent until the switches duplicated."""
        return self.stream.held()["caught_up"]

    def go(self) -> None:
        """MovePerFlow, after the "held" answer (enableEvent's ack): the source starts the push.
        SLiM: the switches point at dst."""
        self.stream.go()

    def done(self) -> dict:
        """The state is in at dst: the transfer's figures."""
        r = self.stream.done()
        self.src.timing["export_s"] += r.get("export_s") or 0.0
        self.dst.timing["import_s"] += r.get("import_s") or 0.0
        self.close()
        return r

    def close(self) -> None:
        if self.open:
            self.open = False
            try:
                self.stream.close()
            finally:
                self.src.lock.release()
