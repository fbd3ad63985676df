"""The agent's state ops: ping, info, stats, get, put, del, push (nfx/agent/PROTOCOL.md). Exports
run one thread per scope, puts and deletes spread over the CPUs: a batch map operation spends its
time in the kernel with the GIL released."""
import logging
import os
import threading
import time

from .. import layout as L
from ..errors import BadInput, NfxError, NotFound, Refused
from ..loader.attach import xdp_attachments
from ..state import ops, wire
from ..state.tables import tables
from . import streams
from .client import AgentClient
from .protocol import PORT, REQUEST_MAX
from ..packets import keys_from_blob
from .transport import KIND_NAMES, Closed, arg_bytes, arg_filter, arg_int, arg_scopes, read_header, send_frames

log = logging.getLogger("nfx.agent")


def _xdp_ids(ifnames) -> dict:
    """Each interface's attached XDP program id, None if none (or unknown). Asked in the agent's
    own netns (every thread of it runs there): naming the netns would have pyroute2 make an empty
    one of that name if a teardown had just removed it."""
    try:
        att = xdp_attachments(None)
    except Exception as e:       # pyroute2's NetlinkError is no OSError; unknown is None, as ever
        log.warning("cannot read the XDP attachments: %s", e)
        att = {}
    return {i: att[i][0] if i in att else None for i in ifnames}



def _in_threads(fns: list, names: list[str]) -> list:
    """Each fn on a thread of its own; their results in order, or the first error, raised here in
    the request's thread."""
    out, errors = [None] * len(fns), []

    def work(i):
        try:
            out[i] = fns[i]()
        except BaseException as e:
            errors.append(e)
    ts = [threading.Thread(target=work, args=(i,), name=names[i]) for i in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return out

class StateOps:
    """Mixed into the agent (nfx/agent/server.py): needs the instance (nfx/agent/instance.py)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._settle_lock, self._settle_timer = threading.Lock(), None

    def op_ping(self, sock, r, req) -> dict:
        return {"instance": self.instance, "kind": self.kind, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 3)}

    def op_info(self, sock, r, req) -> dict:
        maps = {}
        state_tables = {t.name for t in tables(self.kind)}
        for name, m in sorted(self.nf.maps.items()):
            d = {"type": m.info.type, "key_size": m.info.key_size, "value_size": m.info.value_size,
                 "max_entries": m.max_entries, "percpu": m.percpu}
            if req.get("entries") and name in state_tables:
                d["entries"] = m.export()[0]
            maps[name] = d
        return {"testbed": self.testbed, "instance": self.instance, "kind": self.kind,
                "layout": self.layout, "layout_now": L.layout_hash(self.kind), "pid": os.getpid(),
                "ns": self.ns, "addr": self.addr, "port": self.port, "pin": str(self.pin),
                "started": self.started, "uptime_s": round(time.time() - self.started, 3),
                "prog_pinned": (self.pin / "prog").exists(),
                "xdp": _xdp_ids(self.wiring),
                "maps": maps, "tables": [{"name": t.name, "scope": t.scope} for t in tables(self.kind)],
                "streams": sorted(streams.REGISTRY), "requests": self.requests, "adoptions": self.adoptions}

    def op_stats(self, sock, r, req) -> dict:
        return {"instance": self.instance, "stats": self.nf.stats()}

    def _export(self, req) -> tuple[list, dict]:
        scopes, flt = arg_scopes(req), arg_filter(req)
        ce = arg_int(req, "chunk_entries", ops.CHUNK_ENTRIES, 1, 1 << 22)
        t0 = time.perf_counter()
        chunks = self._export_chunks(scopes, flt, ce, req.get("parallel", True))
        summary = {"chunks": len(chunks), "entries": sum(c.count for c in chunks),
                   "bytes": sum(c.nbytes for c in chunks), "export_s": time.perf_counter() - t0,
                   "tables": sorted({c.table for c in chunks}), "scopes": list(scopes), "filter": flt.text,
                   "layout": self.layout}
        return chunks, summary

    def _export_chunks(self, scopes, flt, ce, parallel: bool) -> list:
        """ops.export, one thread per scope when there are several: a batch lookup spends its
        time in the kernel (per hash bucket) with the GIL released, so scopes overlap on two CPUs."""
        if not parallel or len(scopes) < 2:
            return list(ops.export(self.nf, scopes, flt, ce))
        out = _in_threads([lambda sc=sc: list(ops.export(self.nf, (sc,), flt, ce)) for sc in scopes],
                          [f"export-{sc}" for sc in scopes])
        chunks = [c for part in out for c in part]
        for i, c in enumerate(chunks):
            c.seq = i
        return chunks

    def op_get(self, sock, r, req) -> None:
        chunks, summary = self._export(req)
        send_frames(sock, wire.encode_json({"ok": True, "op": "get", **summary}))
        t0 = time.perf_counter()
        for c in chunks:
            send_frames(sock, wire.encode_chunk(c))
        send_frames(sock, wire.encode_json({"chunks": summary["chunks"], "entries": summary["entries"],
                                      "bytes": summary["bytes"], "send_s": time.perf_counter() - t0}, wire.END))
        return None

    def op_put(self, sock, r, req) -> dict:
        """Take every chunk up to END, check them all, then apply: a put with one bad chunk (or of
        another layout) changes nothing."""
        t0 = time.perf_counter()
        chunks, problem, end = [], None, None
        while True:
            h = read_header(r, sock)
            if h is None:
                raise Closed("closed during a put")
            kind, length = h
            if kind == wire.END:
                if length > REQUEST_MAX:
                    r.skip(length)
                else:
                    try:
                        end = r.body(kind, length)
                    except wire.WireError as e:
                        problem = problem or f"malformed END frame: {e}"
                break
            if kind != wire.CHUNK or problem:
                r.skip(length)
                problem = problem or f"expected CHUNK or END frames after put, got {KIND_NAMES[kind]}"
                continue
            try:
                c = r.body(kind, length)
                ops.check(self.nf, c)
                chunks.append(c)
            except BadInput as e:
                problem = str(e)
                chunks = []
        recv_s = time.perf_counter() - t0
        if problem:
            raise BadInput(f"{problem}; nothing was applied")
        if isinstance(end, dict) and "chunks" in end and end["chunks"] != len(chunks):
            raise BadInput(f"put: END says {end['chunks']} chunks, {len(chunks)} arrived; nothing was applied")
        t1 = time.perf_counter()
        report = self._apply(chunks, req.get("parallel", True))
        apply_s = time.perf_counter() - t1
        self.shared_put(chunks)              # a cluster's members hold it before these flows run here
        self.er_after_put(chunks)            # a move with early release lets these flows go now
        self._state_changed()
        # applied_at: CLOCK_MONOTONIC, comparable with stamps taken elsewhere on this machine
        return {**report, "chunks": len(chunks), "bytes": sum(c.nbytes for c in chunks),
                "recv_s": recv_s, "apply_s": apply_s, "applied_at": t1 + apply_s}

    @staticmethod
    def _spread(fn, chunks: list, parallel: bool = True, min_entries: int = 200_000) -> list:
        """fn(group) for groups of chunks balanced by entries, one thread per CPU (at most two),
        each thread pinned to its CPU. Batch updates and deletes spend their time in the kernel
        with the GIL released; pinned, each thread takes and returns hash elements on its own
        CPU's free list instead of both contending for one."""
        cpus = sorted(os.sched_getaffinity(0))[:2]
        if not parallel or len(cpus) < 2 or len(chunks) < 2 or sum(c.count for c in chunks) < min_entries:
            return [fn(chunks)]
        groups, loads = [[] for _ in cpus], [0] * len(cpus)
        for c in sorted(chunks, key=lambda c: -c.count):
            i = loads.index(min(loads))
            groups[i].append(c)
            loads[i] += c.count
        def on_cpu(i):
            os.sched_setaffinity(0, {cpus[i]})           # this thread only
            return fn(groups[i])
        return _in_threads([lambda i=i: on_cpu(i) for i in range(len(cpus))], [f"cpu{c}" for c in cpus])

    def _apply(self, chunks: list, parallel: bool) -> dict:
        """ops.put, spread over the CPUs when there is enough to do."""
        outs = self._spread(lambda g: ops.put(self.nf, g), chunks, parallel)
        return {"applied": sorted(a for o in outs for a in o["applied"]),
                "failed": [f for o in outs for f in o["failed"]], "entries": sum(o["entries"] for o in outs)}

    def op_del(self, sock, r, req) -> dict:
        scopes, flt = arg_scopes(req), arg_filter(req)
        if req.get("keys") is not None:
            # these flows only (a move's on a spread testbed): their per-flow entries and the
            # multi-flow entries that name them (a NAT's public ports); a host's counters stay
            keyset = {bytes(k) for k in keys_from_blob(arg_bytes(req, "keys"))}
            chunks = list(ops.export_flows(self.nf, scopes, flt, keyset))
        else:
            chunks = self._export_chunks(scopes, flt, ops.CHUNK_ENTRIES, True)

        def delete(group):
            done = {}
            for c in group:
                done[c.table] = done.get(c.table, 0) + ops.delete_chunk(self.nf, c)
            return done
        d = {}
        for part in self._spread(delete, chunks, req.get("parallel", True)):
            for t, n in part.items():
                d[t] = d.get(t, 0) + n
        self._state_changed()
        out = {"deleted": d, "entries": sum(d.values())}
        if req.get("forget"):
            # the flows left this instance's cluster (a move across it): no replica keeps them
            out["replicas_forgotten"] = self.shared_forget(chunks)
        return out

    def _state_changed(self, after_s: float = 0.3) -> None:
        """nf.state_changed once the puts and deletes of a move have stopped for after_s: one
        settling pass per burst, off the path of the move's replies."""
        with self._settle_lock:
            if self._settle_timer is not None:
                self._settle_timer.cancel()
            self._settle_timer = threading.Timer(after_s, self._settle)
            self._settle_timer.daemon = True
            self._settle_timer.start()

    def _settle(self) -> None:
        try:
            self.nf.state_changed()
        except Exception as e:              # a settling pass must never take the agent down
            log.warning("settling after a state change failed: %s", e)

    def _peer_addr(self, to: str, addr, port) -> tuple[str, int]:
        """Where instance `to` of this testbed listens, from the registry (as it is now: instances
        come and go). State goes to the testbed's own instances only: `addr`/`port`, if given,
        must be that instance's."""
        rec = self.peers()
        nodes = rec.get("nodes", {})
        nfs = [n for n, i in nodes.items() if i.get("role") == "nf"]
        if to not in nfs:
            raise Refused(f"push: {to!r} is not an instance of testbed {self.testbed} ({', '.join(nfs)})")
        if to == self.instance:
            raise BadInput(f"push: {to} is this instance")
        a = (rec.get("mgmt") or {}).get("agents", {}).get(to)
        p = (nodes[to].get("agent") or {}).get("port") or PORT
        if not a:
            raise NotFound(f"push: testbed {self.testbed} has no management address for {to}")
        if (addr is not None and addr != a) or (port is not None and port != p):
            raise Refused(f"push: {addr or a}:{port or p} is not where {to} of testbed {self.testbed} listens "
                          f"({a}:{p}); state goes to the testbed's own instances only")
        return a, p

    def op_push(self, sock, r, req) -> dict:
        to = req.get("to")
        if not isinstance(to, str) or not to:
            raise BadInput("push needs 'to': the instance to send the state to")
        addr, port = self._peer_addr(to, req.get("addr"), req.get("port"))
        timeout = req.get("timeout", 600)
        t0 = time.perf_counter()
        chunks, summary = self._export(req)
        peer = AgentClient(self.testbed, to, ns=None, addr=addr, port=port, timeout=timeout)
        try:
            t1 = time.perf_counter()
            try:
                report = peer.put(chunks, parallel=req.get("parallel", True))
            except NfxError as e:
                raise type(e)(f"push to {to}: {e}", hint=e.hint) from None
            send_s = peer.last_send_s
        finally:
            peer.close()
        t2 = time.perf_counter()
        return {"to": to, "entries": summary["entries"], "chunks": summary["chunks"], "bytes": summary["bytes"],
                "tables": summary["tables"], "export_s": summary["export_s"], "send_s": send_s,
                "transfer_s": report["recv_s"], "import_s": report["apply_s"], "put_s": t2 - t1,
                "total_s": t2 - t0, "applied": len(report["applied"]), "failed": report["failed"],
                "imported": report["entries"]}
