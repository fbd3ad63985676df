"""Client of one agent: its methods mirror the protocol's ops (nfx/agent/PROTOCOL.md).

    with AgentClient("t1", "nf0") as a:
        chunks = a.get(scopes=("per-flow",), filter="proto=tcp")
        AgentClient("t1", "nf1").put(chunks)

By default the socket is made inside the testbed's management netns (where the controller
sits); `ns=None` keeps the caller's netns (an agent pushing to a peer). One connection, opened
on first use, one request at a time. `delay_ms` (and `rate_mbit`) put the connection behind an
emulated link (nfx/agent/link.py): each frame arrives `delay_ms` after it was sent, and
streams of frames are pipelined through it. A caller that holds the testbed's record already
(the controller, once per move) makes its clients with `AgentClient.for_node`, which reads
nothing from disk. A move's streams have their own calls: move_get, move_dist, move_ctrl
(the streams that outlast a call are in client_streams.py)."""
import base64
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from ..closing import ClosedWhenCollected
from ..errors import AgentDown, BadInput, NfxError, NotFound, Timeout, from_wire
from ..loader import netns
from ..state import ops, wire
from .. import registry
from . import link
from .client_streams import Channel, DistStream, Subscription
from .protocol import PORT

RETRY_OPS = {"ping", "info", "stats", "get", "marks"}


def nf_node(rec: dict, instance: str) -> dict:
    """What a client needs of one NF instance from the testbed's record (the registry): its
    testbed and name, the agent's address and port on the management network, and the
    instance's index and peer slots."""
    testbed = rec["name"]
    nfs = [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]
    if instance not in nfs:
        raise NotFound(f"no NF instance {instance!r} in testbed {testbed}",
                       hint=f"instances: {', '.join(nfs) or 'none'}")
    mg = rec.get("mgmt")
    if not mg or instance not in mg.get("agents", {}):
        raise NotFound(f"testbed {testbed} has no management address for {instance} (still building?)")
    info = rec["nodes"][instance]
    return {"testbed": testbed, "name": instance, "agent_addr": mg["agents"][instance],
            "agent_port": (info.get("agent") or {}).get("port") or PORT,
            "index": info.get("index", 0), "peer_slots": info.get("peer_slots", {})}


def _field(node, name: str):
    return node[name] if isinstance(node, dict) else getattr(node, name)


class AgentClient(ClosedWhenCollected):
    def __init__(self, testbed: str, instance: str, *, timeout: float = 30.0, delay_ms: float = 0.0,
                 rate_mbit: float = 0.0, ns: str | None = "mgmt", addr: str | None = None, port: int | None = None,
                 token: str | None = None):
        """The agent of `instance`, found in the testbed's registry (read here, once); nf1@B is
        instance nf1 of the testbed this one is joined to, reached over the routed link from
        this testbed's management netns (or, ns=None, the caller's)."""
        rec = registry.load(testbed)
        mgmt_ns = rec["mgmt"]["ns"]
        if registry.SITE_SEP in instance:
            rec, instance = registry.joined_node(rec, instance)
        node = nf_node(rec, instance)
        self._setup(node, rec.get("token") if token is None else token, mgmt_ns if ns == "mgmt" else ns,
                    timeout, delay_ms, rate_mbit, addr, port)

    @classmethod
    def for_node(cls, node, token: str | None, mgmt_ns: str | None, *, timeout: float = 30.0,
                 delay_ms: float = 0.0, rate_mbit: float = 0.0, addr: str | None = None,
                 port: int | None = None) -> "AgentClient":
        """The agent of `node` (nf_node's dict, or an object with the same fields), reached from
        netns `mgmt_ns` (None: the caller's) with the testbed's `token`. Reads no registry."""
        c = cls.__new__(cls)
        c._setup(node, token, mgmt_ns, timeout, delay_ms, rate_mbit, addr, port)
        return c

    @classmethod
    def peer(cls, testbed: str, dst: str, at: dict | None, **kw) -> "AgentClient":
        """The agent a move's source sends to, from the caller's netns: instance `dst` of
        `testbed`, or, with `at` (an instance a joined testbed lends: nfx/testbed/lend.py), the
        one at the address the controller gave: {testbed, name, agent_addr, agent_port, token}."""
        if not at:
            return cls(testbed, dst, ns=None, **kw)
        if not isinstance(at, dict) or not all(isinstance(at.get(f), str) for f in ("testbed", "name", "agent_addr")):
            raise BadInput("dst_at needs testbed, name and agent_addr")
        return cls.for_node(at, at.get("token"), None, **kw)

    def _setup(self, node, token, ns, timeout, delay_ms, rate_mbit, addr, port) -> None:
        if delay_ms < 0 or rate_mbit < 0:
            raise BadInput("delay_ms and rate_mbit must be >= 0")
        self.testbed, self.instance = _field(node, "testbed"), _field(node, "name")
        self.addr = addr or _field(node, "agent_addr")
        self.port = port or _field(node, "agent_port")
        self.ns = ns
        self.token = token
        self.timeout = timeout
        self.links = (link.pair((self.testbed, self.instance), delay_ms, rate_mbit)
                      if delay_ms or rate_mbit else None)
        self._sock: socket.socket | None = None
        self._reader: wire.Reader | None = None
        self._conn: link.DelayedConn | None = None
        self.last_send_s = 0.0          # time spent writing the last request (and its chunks)

    # ---- transport ----
    def _down(self, why: str) -> AgentDown:
        return AgentDown(f"agent of {self.instance} in testbed {self.testbed} is not answering at "
                         f"{self.addr}:{self.port} ({why})",
                         hint=f"start it: nfx nf start --name {self.testbed} --instance {self.instance}")

    def connect(self) -> None:
        if self._sock is not None:
            return
        with netns.enter(self.ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(min(self.timeout, 5.0))
        try:
            s.connect((self.addr, self.port))
        except ConnectionRefusedError:
            s.close()
            raise self._down("connection refused: no agent is listening") from None
        except socket.timeout:
            s.close()
            raise self._down("connect timed out") from None
        except OSError as e:
            s.close()
            raise self._down(e.strerror or str(e)) from None
        s.settimeout(self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._reader = s, wire.Reader(s)
        if self.links:
            self._conn = link.DelayedConn(s, *self.links)

    def interrupt(self) -> None:
        """From another thread: a request blocked on this connection fails at once (a peer that
        stopped still accepts, and never answers). close() still follows."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._sock is not None:
            try:
                if self._conn is not None:
                    self._conn.close()
                self._sock.close()
            finally:
                self._sock = self._reader = self._conn = None


    def _write(self, parts) -> None:
        try:
            if self._conn is not None:
                self._conn.write(parts)
            else:
                wire.write(self._sock, parts)
        except socket.timeout:
            self.close()
            raise Timeout(f"sending to the agent of {self.instance} timed out after {self.timeout:g} s") from None
        except OSError as e:
            self.close()
            raise self._down(f"connection lost while sending: {e.strerror or e}") from None

    def read_frame(self, wait: float | None = None):
        """The next frame; with `wait`, None if none came in that many seconds."""
        try:
            if self._conn is not None:
                try:
                    fr = self._conn.frame(self.timeout if wait is None else wait)
                except queue.Empty:
                    if wait is not None:
                        return None
                    raise socket.timeout from None
            else:
                if wait is not None:
                    # poll, not select: the caller may hold over 1023 fds (a test run's BPF objects)
                    waiting = select.poll()
                    waiting.register(self._sock, select.POLLIN)
                    if not waiting.poll(wait * 1000):
                        return None
                fr = self._reader.frame()
        except socket.timeout:
            self.close()
            raise Timeout(f"the agent of {self.instance} did not answer within {self.timeout:g} s") from None
        except wire.WireError as e:
            self.close()
            if "short of a frame" in str(e):
                raise self._down("the connection closed mid-reply") from None
            raise NfxError(f"bad reply from the agent of {self.instance}: {e}") from None
        except OSError as e:
            self.close()
            raise self._down(f"connection lost: {e.strerror or e}") from None
        if fr is None:
            self.close()
            raise self._down("the agent closed the connection")
        return fr

    def _begin(self, op: str, args: dict, parts_after: Iterable | None = None) -> None:
        """Send one request (and, for put, the frames that follow it). Arguments that are None
        are left out; bytes travel base64-encoded (keys, packets)."""
        req = {"op": op, "token": self.token,
               **{k: base64.b64encode(v).decode() if isinstance(v, bytes) else v
                  for k, v in args.items() if v is not None}}
        self.connect()
        t0 = time.perf_counter()
        self._write(wire.encode_json(req))
        if parts_after is not None:
            for parts in parts_after:
                self._write(parts)
        self.last_send_s = time.perf_counter() - t0

    def _reply(self, op: str) -> dict:
        kind, obj = self.read_frame()
        if kind == wire.ERROR:
            from_wire(obj, f"{self.instance}: ")
        if kind != wire.JSON:
            self.close()
            raise NfxError(f"unexpected reply to {op} from {self.instance}: frame kind {kind}")
        return obj

    def request(self, op: str, **args) -> dict:
        """One request, one JSON reply (ERROR raises the matching NfxError)."""
        fresh = self._sock is None
        try:
            self._begin(op, args)
            return self._reply(op)
        except AgentDown:
            if fresh or op not in RETRY_OPS:
                raise
        # a kept connection to an agent that was restarted since: once more on a new one
        self._begin(op, args)
        return self._reply(op)

    # ---- ops ----
    def ping(self) -> dict:
        t0 = time.perf_counter()
        r = self.request("ping")
        r["rtt_ms"] = (time.perf_counter() - t0) * 1000
        return r

    def info(self, entries: bool = False) -> dict:
        return self.request("info", entries=entries or None)

    def stats(self) -> dict:
        return self.request("stats")["stats"]

    def iter_get(self, scopes=None, filter: str | None = None, chunk_entries: int | None = None,
                 head: dict | None = None) -> Iterator[wire.Chunk]:
        """Chunks as they arrive; `head` (if given) receives the reply and then the END summary.
        Consume it to the end before the next request (left mid-stream, the connection closes)."""
        args = {"scopes": list(scopes) if scopes is not None and not isinstance(scopes, str) else scopes,
                "filter": filter, "chunk_entries": chunk_entries}
        return self._chunks("get", args, head, retry=True)

    def _chunks(self, op: str, args: dict, head: dict | None, retry: bool) -> Iterator[wire.Chunk]:
        fresh = self._sock is None
        try:
            self._begin(op, args)
            r = self._reply(op)
        except AgentDown:
            if fresh or not retry:
                raise
            self._begin(op, args)
            r = self._reply(op)
        if head is not None:
            head.update(r)
        try:
            while True:
                kind, obj = self.read_frame()
                if kind == wire.CHUNK:
                    yield obj
                elif kind == wire.END:
                    if head is not None:
                        head["end"] = obj
                    return
                elif kind == wire.ERROR:
                    from_wire(obj, f"{self.instance}: ")
                else:
                    self.close()
                    raise NfxError(f"unexpected frame kind {kind} in the state stream from {self.instance}")
        except GeneratorExit:
            self.close()            # left mid-stream: the connection is out of step
            raise

    def get(self, scopes=None, filter: str | None = None, on_chunk: Callable | None = None,
            chunk_entries: int | None = None, head: dict | None = None):
        """The selected state: a list of chunks, or (with on_chunk) each handed over as it arrives
        and the reply's summary returned."""
        h = {} if head is None else head
        it = self.iter_get(scopes, filter, chunk_entries, h)
        if on_chunk is None:
            return list(it)
        for c in it:
            on_chunk(c)
        return h

    def export(self, path: str, scopes=None, filter: str | None = None, meta: dict | None = None,
               on_chunk: Callable | None = None) -> dict:
        """Stream the selected state into a state file (ops.save's format)."""
        head = {}

        def chunks():
            for c in self.iter_get(scopes, filter, head=head):
                if on_chunk:
                    on_chunk(c)
                yield c
        m = {"testbed": self.testbed, "instance": self.instance, "exported_at": time.time(),
             "filter": filter or "all", "scopes": list(scopes) if scopes and not isinstance(scopes, str) else scopes or "all",
             **(meta or {})}
        t0 = time.perf_counter()
        r = ops.save(path, m, chunks())
        r["seconds"] = time.perf_counter() - t0
        r["export_s"] = head.get("export_s")
        return r

    def put(self, chunks: Iterable[wire.Chunk], parallel: bool | None = None,
            on_chunk: Callable | None = None, stream: bool = False) -> dict:
        """Stream chunks; the agent checks them all, then applies them (all or nothing on a bad
        chunk), or with `stream` applies each as it arrives (a bad chunk or a broken stream takes
        back what it applied). Returns its report: applied, failed, entries, recv_s, apply_s."""
        count = [0, 0]

        def frames():
            for c in chunks:
                count[0] += 1
                count[1] += c.count
                yield wire.encode_chunk(c)
                if on_chunk:
                    on_chunk(c)
            yield wire.encode_json({"chunks": count[0], "entries": count[1]}, wire.END)
        self._begin("put", {"parallel": parallel, "stream": stream or None}, frames())
        return self._reply("put")

    def send_state(self, chunks: Iterable[wire.Chunk], pipelined: bool, on_done: Callable | None = None,
                   streamed: bool = False) -> dict:
        """A move's state to this agent: each chunk applied as it arrives (pipelined puts), or all
        at the end. With `streamed` (pipelined, nothing to do per chunk) one streamed put, whose
        chunks the agent applies on a worker per CPU as they arrive. on_done(reply, chunks) after
        each put; a chunk not applied raises. Returns {chunks, entries, bytes, import_s,
        applied_at}: applied_at is when the agent applied the last chunk (its CLOCK_MONOTONIC),
        None if there was nothing to send."""
        out = {"chunks": 0, "entries": 0, "bytes": 0, "import_s": 0.0, "applied_at": None}

        def done(r, cs):
            if r["failed"]:
                raise NfxError(f"{self.instance} did not apply {len(r['failed'])} state chunk(s): "
                               f"{r['failed'][0]['error']}")
            out["chunks"] += len(cs)
            out["entries"] += sum(c.count for c in cs)
            out["bytes"] += sum(c.nbytes for c in cs)
            out["import_s"] += r.get("apply_s") or 0.0
            out["applied_at"] = r.get("applied_at")
            if on_done:
                on_done(r, cs)
        if pipelined and streamed:
            sent: list = []
            r = self.put(chunks, on_chunk=sent.append, stream=True)
            if sent:
                done(r, sent)
        elif pipelined:
            self.put_each(chunks, done)
        else:
            cs = list(chunks)
            if cs:
                done(self.put(cs), cs)
        return out

    def put_each(self, chunks: Iterable[wire.Chunk], on_done: Callable) -> int:
        """One put per chunk, sent back to back without waiting for the replies (pipelined);
        on_done(reply, [chunk]) runs as each is acknowledged, in order. Returns the puts sent."""
        sent: queue.Queue = queue.Queue()
        err: list = []

        def acks():
            try:
                while (c := sent.get()) is not None:
                    on_done(self._reply("put"), [c])
            except BaseException as e:
                err.append(e)
        t = threading.Thread(target=acks, daemon=True, name="put-acks")
        t.start()
        n = 0
        try:
            for c in chunks:
                if err:
                    break
                self._begin("put", {}, [wire.encode_chunk(c), wire.encode_json({"chunks": 1, "entries": c.count}, wire.END)])
                sent.put(c)
                n += 1
        finally:
            sent.put(None)
            t.join()
        if err:
            self.close()          # replies may be left unread: the connection is out of step
            raise err[0]
        return n

    def delete(self, scopes=None, filter: str | None = None) -> dict:
        return self.request("del", scopes=_scopes_arg(scopes), filter=filter)

    def push(self, to: str, scopes=None, filter: str | None = None, addr: str | None = None,
             port: int | None = None, parallel: bool | None = None, pipelined: bool = True) -> dict:
        """Have this agent send its selected state straight to agent `to` (peer to peer);
        pipelined: export, transfer and import overlap chunk by chunk."""
        return self.request("push", to=to, scopes=_scopes_arg(scopes), filter=filter, addr=addr, port=port,
                            parallel=parallel, pipelined=pipelined, timeout=max(self.timeout, 60))

    def mark(self, action: str | int, flows: list[dict] | None = None, filter: str | None = None,
             peer: int = 0, tag: int = 0, epoch: int = 0) -> dict:
        return self.request("mark", action=action, flows=flows, filter=filter, peer=peer, tag=tag, epoch=epoch)

    def unmark(self, flows: list[dict] | None = None, filter: str | None = None, all: bool = False) -> dict:
        return self.request("unmark", flows=flows, filter=filter, all=all or None)

    def marks(self, limit: int | None = None) -> dict:
        return self.request("marks", limit=limit)

    def set_filter(self, slot: int, filter: str | None, action: str | int, peer: int = 0, tag: int = 0,
                   bidir: bool = True) -> dict:
        return self.request("filter", slot=slot, filter=filter or "all", action=action, peer=peer, tag=tag,
                            bidir=bidir)

    def clear_filter(self, slot: int) -> dict:
        return self.request("filter", slot=slot, clear=True)

    # ---- a move's streams (nfx/agent/PROTOCOL.md, the move ops) ----
    def move_get(self, scopes, filter: str, ll: bool = False, peer: int = 0,
                 head: dict | None = None) -> Iterator[wire.Chunk]:
        """A move's export: the state `filter` selects, chunk by chunk as it arrives; with `ll`
        (late locking) the agent holds the flows back group by group as it reads them, toward
        peer slot `peer`. `head` receives the reply, then the END summary (export_s)."""
        args = {"scopes": list(scopes), "filter": filter}
        if ll:
            args.update(ll=True, peer=peer)
        return self._chunks("move_get", args, head, retry=False)

    def move_dist(self, dst: str, epoch: int, guarantee: str, opts, filter: str, scopes, timeout: float,
                  fire: int = 0, data_delay_ms: float = 0.0, data_rate_mbit: float = 0.0,
                  cluster_inside: bool = False, want_keys: bool = False) -> DistStream:
        """DiST's move, run by this (source) agent, on this connection until the stream is
        closed: fire is the token of rules armed on the switches, for the agent to fire once
        it may; data_*: the emulated link it sends to dst over."""
        args = {"dst": dst, "epoch": epoch, "guarantee": guarantee, "opts": sorted(opts), "filter": filter,
                "scopes": list(scopes), "timeout": timeout,
                "data_delay_ms": data_delay_ms or None, "data_rate_mbit": data_rate_mbit or None,
                "cluster_inside": cluster_inside or None, "want_keys": want_keys or None}
        if fire:
            args["fire"] = f"{fire:x}"
        self._begin("move_dist", args)
        return DistStream(self._channel())

    def move_slim(self, dst: str, epoch: int, guarantee: str, filter: str, scopes, timeout: float,
                  ready_statelets: int = 0, data_delay_ms: float = 0.0, data_rate_mbit: float = 0.0,
                  stall_reader_ms: float = 0.0, rt: bool = False, dst_at: dict | None = None) -> DistStream:
        """SLiM's move, run by this (source) agent, on this connection until the stream is closed:
        held() is the "mirroring" answer, then "ready" (relayed from dst), go(), done().
        dst_at: where dst's agent is, when it is in a joined testbed (AgentClient.peer)."""
        args = {"dst": dst, "dst_at": dst_at, "epoch": epoch, "guarantee": guarantee, "filter": filter, "scopes": list(scopes),
                "timeout": timeout, "ready_statelets": ready_statelets or None,
                "data_delay_ms": data_delay_ms or None, "data_rate_mbit": data_rate_mbit or None,
                "stall_reader_ms": stall_reader_ms or None, "rt": rt or None}
        self._begin("move_slim", args)
        return DistStream(self._channel())

    def move_ctrl(self) -> Iterator[bytes]:
        """The packets a TO_CTRL source sends up (one blob of buffer records per frame), until
        its move ends. Use a connection of its own: it stays busy that long."""
        self._begin("move_ctrl", {})
        self._reply("move_ctrl")
        while True:
            kind, obj = self.read_frame()
            if kind != wire.JSON:
                return
            yield base64.b64decode(obj["packets"])

    def _channel(self) -> Channel:
        return Channel(self.read_frame, self._write, self.close, lambda: self._sock is not None, self.instance)

    def subscribe(self, streams=("stats",), interval: float = 1.0) -> Subscription:
        self._begin("subscribe", {"streams": list(streams), "interval": interval})
        r = self._reply("subscribe")
        return Subscription(self._channel(), r)


def _scopes_arg(scopes):
    if scopes is None or isinstance(scopes, str):
        return scopes
    return list(scopes)
