"""The agent's state ops: ping, info, stats, get, put, del, push (nfx/agent/PROTOCOL.md). Exports
run one thread per scope, puts and deletes spread over the CPUs: a batch map operation spends its
time in the kernel with the GIL released."""
import logging
import os
import queue
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
# chunks read ahead of the one being applied in a streamed put (64k entries each: ~4 MB of NAT)
STREAM_QUEUE = 8


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

def _read_end(r, length: int) -> tuple[dict | None, str | None]:
    """A put's END frame: (its body, None), or (None, why it is refused); too long, skipped."""
    if length > REQUEST_MAX:
        r.skip(length)
        return None, None
    try:
        return r.body(wire.END, length), None
    except wire.WireError as e:
        return None, f"malformed END frame: {e}"


def _not_a_chunk(kind: int) -> str:
    return f"expected CHUNK or END frames after put, got {KIND_NAMES[kind]}"


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
        t0, c0 = time.perf_counter(), time.process_time()
        chunks = self._export_chunks(scopes, flt, ce, req.get("parallel", True))
        summary = {"chunks": len(chunks), "entries": sum(c.count for c in chunks),
                   "bytes": sum(c.nbytes for c in chunks), "export_s": time.perf_counter() - t0,
                   "export_cpu_s": time.process_time() - c0,
                   "tables": sorted({c.table for c in chunks}), "scopes": list(scopes), "filter": flt.text,
                   "layout": self.layout}
        return chunks, summary

    def _export_groups(self, scopes, parallel: bool) -> list:
        """The tables each export thread reads: one each when parallel (a batch lookup spends its
        time in the kernel, per hash bucket, with the GIL released, so tables overlap on the
        CPUs; per table rather than per scope, as a NAT's per-flow scope holds two of its three
        big tables), else all of them in one."""
        names = [t.name for t in tables(self.kind, scopes)]
        return [(n,) for n in names] if parallel and len(names) > 1 else [tuple(names)]

    def _export_chunks(self, scopes, flt, ce, parallel: bool) -> list:
        """ops.export, one thread per table when parallel (_export_groups)."""
        groups = self._export_groups(scopes, parallel)
        if len(groups) < 2:
            return list(ops.export(self.nf, scopes, flt, ce))
        out = _in_threads([lambda g=g: list(ops.export(self.nf, scopes, flt, ce, names=g)) for g in groups],
                          [f"export-{'+'.join(g)}" for g in groups])
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
        another layout) changes nothing. A streamed put (`stream`) applies each chunk as it
        arrives, on a thread of its own while the next is read; a bad chunk or a broken stream
        takes back everything it applied (ops.PutLog.undo) before the error is returned."""
        if req.get("stream"):
            return self._put_streamed(sock, r, req.get("parallel", True))
        t0 = time.perf_counter()
        chunks, problem, end = [], None, None
        while True:
            h = read_header(r, sock)
            if h is None:
                raise Closed("closed during a put")
            kind, length = h
            if kind == wire.END:
                end, bad = _read_end(r, length)
                problem = problem or bad
                break
            if kind != wire.CHUNK or problem:
                r.skip(length)
                problem = problem or _not_a_chunk(kind)
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
        t1, c1 = time.perf_counter(), time.process_time()
        report = self._apply(chunks, req.get("parallel", True))
        apply_s = time.perf_counter() - t1
        report["apply_cpu_s"] = time.process_time() - c1
        return self._put_done(chunks, report, recv_s, apply_s, t1 + apply_s)

    def _put_done(self, chunks: list, report: dict, recv_s: float, apply_s: float, applied_at: float) -> dict:
        self.shared_put(chunks)              # a cluster's members hold it before these flows run here
        self.er_after_put(chunks)            # a move with early release lets these flows go now
        self._state_changed()
        # applied_at: CLOCK_MONOTONIC, comparable with stamps taken elsewhere on this machine
        return {**report, "chunks": len(chunks), "bytes": sum(c.nbytes for c in chunks),
                "recv_s": recv_s, "apply_s": apply_s, "applied_at": applied_at}

    def _put_streamed(self, sock, r, parallel: bool = True) -> dict:
        t0 = time.perf_counter()
        todo: queue.Queue = queue.Queue(maxsize=STREAM_QUEUE)
        chunks, failed = [], []
        span = {"first": None, "last": None, "cpu_s": 0.0}
        log_ = ops.PutLog(self.nf)
        lock = threading.Lock()
        cpus = sorted(os.sched_getaffinity(0))[:2] if parallel else []

        def apply(cpu):
            # pinned, each worker takes hash elements from its own CPU's free list (as _spread)
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            c0 = time.thread_time()
            while (c := todo.get()) is not None:
                if failed:
                    continue                 # drain: the reader must never block on a full queue
                t = time.perf_counter()
                with lock:
                    span["first"] = span["first"] or t
                try:
                    log_.put(c)
                except (BadInput, NfxError) as e:
                    failed.append(f"chunk {c.seq} ({c.table}): {e}")
                with lock:
                    span["last"] = max(span["last"] or 0.0, time.perf_counter())
            with lock:
                span["cpu_s"] += time.thread_time() - c0
        workers = [threading.Thread(target=apply, args=(cpu,), name=f"put-apply-{cpu}", daemon=True)
                   for cpu in (cpus if len(cpus) > 1 else [None])]
        for w in workers:
            w.start()
        problem, end, read_all = None, None, False
        try:
            while True:
                h = read_header(r, sock)          # a malformed frame raises (Closed), its error sent
                if h is None:
                    problem = "the stream closed before its END"
                    break
                kind, length = h
                if kind == wire.END:
                    end, bad = _read_end(r, length)
                    problem = problem or bad
                    break
                if kind != wire.CHUNK or problem or failed:
                    r.skip(length)
                    problem = problem or (None if failed else _not_a_chunk(kind))
                    continue
                try:
                    c = r.body(kind, length)
                    ops.check(self.nf, c)
                except (BadInput, wire.WireError) as e:
                    problem = str(e)
                    continue
                chunks.append(c)
                todo.put(c)
            read_all = True
        finally:
            for _ in workers:
                todo.put(None)
            for w in workers:
                w.join()
            if not read_all:
                log.warning("streamed put broken off: taken back (%d entries removed, %d restored)", *log_.undo())
        recv_s = time.perf_counter() - t0
        if not problem and not failed and isinstance(end, dict) and end.get("chunks", len(chunks)) != len(chunks):
            problem = f"END says {end['chunks']} chunks, {len(chunks)} arrived"
        if problem or failed:
            removed, restored = log_.undo()
            if problem == "the stream closed before its END":
                log.warning("streamed put: %s; taken back (%d entries removed, %d restored)", problem, removed, restored)
                raise Closed("closed during a put")
            raise BadInput(f"{problem or failed[0]}; what the put had applied was taken back "
                           f"({removed} entries removed, {restored} restored)")
        report = {"applied": [c.seq for c in chunks], "failed": [], "entries": sum(c.count for c in chunks),
                  "apply_cpu_s": span["cpu_s"]}
        apply_s = (span["last"] - span["first"]) if span["first"] else 0.0
        return self._put_done(chunks, report, recv_s, apply_s, span["last"] or time.perf_counter())

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
        """This instance's selected state straight to agent `to`. Pipelined (the default): the
        export, the transfer and the import overlap chunk by chunk (the chunks go out as the
        kernel hands them over, in a streamed put the peer applies as they arrive), so the push
        takes about as long as its slowest leg; a failure takes back what the peer applied.
        `pipelined: false` exports everything first, then sends it, then the peer applies it."""
        to = req.get("to")
        if not isinstance(to, str) or not to:
            raise BadInput("push needs 'to': the instance to send the state to")
        addr, port = self._peer_addr(to, req.get("addr"), req.get("port"))
        timeout = req.get("timeout", 600)
        pipelined = req.get("pipelined", True)
        parallel = req.get("parallel", True)
        t0 = time.perf_counter()
        if pipelined:
            chunks, summary = self._export_stream(req)
        else:
            chunks, summary = self._export(req)
        peer = AgentClient(self.testbed, to, ns=None, addr=addr, port=port, timeout=timeout)
        try:
            t1 = time.perf_counter()
            try:
                report = peer.put(chunks, parallel=parallel, stream=bool(pipelined))
            except NfxError as e:
                raise type(e)(f"push to {to}: {e}", hint=e.hint) from None
            send_s = peer.last_send_s
        finally:
            peer.close()
            if pipelined:
                chunks.close()
        t2 = time.perf_counter()
        return {"to": to, "pipelined": bool(pipelined), "entries": summary["entries"], "chunks": summary["chunks"],
                "bytes": summary["bytes"], "tables": sorted(summary["tables"]), "export_s": summary["export_s"],
                "send_s": send_s, "transfer_s": report["recv_s"], "import_s": report["apply_s"], "put_s": t2 - t1,
                "export_cpu_s": summary.get("export_cpu_s"), "import_cpu_s": report.get("apply_cpu_s"),
                "total_s": t2 - t0, "applied": len(report["applied"]), "failed": report["failed"],
                "imported": report["entries"]}

    def _export_stream(self, req):
        """export_stream as a request asks for it."""
        return self.export_stream(arg_scopes(req), arg_filter(req),
                                  arg_int(req, "chunk_entries", ops.CHUNK_ENTRIES, 1, 1 << 22), req.get("parallel", True))

    def export_stream(self, scopes, flt, ce: int = ops.CHUNK_ENTRIES, parallel: bool = True):
        """(chunks, summary) like _export, but the chunks are a generator fed by one export
        thread per table (_export_groups) as the kernel hands entries over; summary fills in as
        they pass (read it once the generator is done). Closing the generator stops the threads."""
        groups = self._export_groups(scopes, parallel)
        summary = {"chunks": 0, "entries": 0, "bytes": 0, "export_s": 0.0, "export_cpu_s": 0.0, "tables": set()}
        out: queue.Queue = queue.Queue(maxsize=STREAM_QUEUE)
        stop, lock = threading.Event(), threading.Lock()
        t0 = time.perf_counter()

        def produce(group):
            c0 = time.thread_time()
            try:
                for c in ops.export(self.nf, scopes, flt, ce, names=group):
                    if stop.is_set():
                        return
                    out.put(c)
            except BaseException as e:
                out.put(e)
            finally:
                with lock:
                    summary["export_cpu_s"] += time.thread_time() - c0
                out.put(None)
        threads = [threading.Thread(target=produce, args=(g,), name=f"export-{'+'.join(g)}", daemon=True)
                   for g in groups]
        for t in threads:
            t.start()

        def chunks():
            left = len(threads)
            try:
                while left:
                    c = out.get()
                    if c is None:
                        left -= 1
                        continue
                    if isinstance(c, BaseException):
                        raise c
                    c.seq = summary["chunks"]
                    summary["chunks"] += 1
                    summary["entries"] += c.count
                    summary["bytes"] += c.nbytes
                    summary["tables"].add(c.table)
                    yield c
                summary["export_s"] = time.perf_counter() - t0
            finally:
                stop.set()
                while any(t.is_alive() for t in threads):    # unblock producers waiting on a full queue
                    try:
                        out.get(timeout=0.05)
                    except queue.Empty:
                        pass
        return chunks(), summary
