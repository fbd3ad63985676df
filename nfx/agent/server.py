"""The agent: one process per NF instance, in the instance's netns. It reopens the instance's
pinned maps (the XDP program stays attached: the agent never compiles or attaches anything) and
serves the southbound API on the management network: one thread (nfx/agent/handshake.py) holds
every connection until it sends a request with the testbed's token, then it gets a thread of its
own. A bad request gets an ERROR frame; it never ends the agent. See nfx/agent/PROTOCOL.md."""
import argparse
import ctypes as ct
import errno
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .. import layout as L
from ..errors import BadInput, NfxError, NotFound, Refused
from ..flows import be_to_ip, key_fields, make_key, reverse
from ..gate import Gate, check_ports
from ..loader import netns
from ..state import filter as F, ops, wire
from ..state.tables import parse_scopes, tables
from . import streams
from .handshake import FrontDoor, refused, token_ok
from .moves import MOVE_OPS, MoveOps
from .protocol import ACTIONS, FRAME_MAX, IDLE_S, OPS, PORT, REQUEST_MAX, action_num, error_frame, jsonable

log = logging.getLogger("nfx.agent")
KIND_NAMES = {wire.JSON: "JSON", wire.CHUNK: "CHUNK", wire.END: "END", wire.ERROR: "ERROR"}
ACTION_NAMES = {v: k for k, v in ACTIONS.items()}
KEY_BYTES = ct.sizeof(L.FlowKey)


def _prefix_str(addr: int, mask: int) -> str | None:
    return f"{be_to_ip(addr)}/{bin(mask).count('1')}" if mask else None


def _linger_close(sock, limit: int = 1 << 20, seconds: float = 1.0) -> None:
    """Close after an ERROR without a reset: end our side, read what the peer still sends (a
    little, briefly), so it sees the ERROR and then a clean end of stream."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(seconds)
        end = time.monotonic() + seconds
        while limit > 0 and time.monotonic() < end:
            got = sock.recv(65536)
            if not got:
                break
            limit -= len(got)
    except OSError:
        pass


class _Closed(Exception):
    """The peer went away mid-request."""


def _send(sock, parts) -> int:
    return wire.write(sock, parts)


def _header(r, sock):
    """The next frame header inside a request (a put's chunks, a subscriber's stop): a stream out
    of step ends the connection, after an ERROR that says so."""
    try:
        return r.header()
    except wire.WireError as e:
        _send(sock, error_frame(BadInput(f"malformed frame: {e}; nothing was applied; closing the connection")))
        _linger_close(sock)
        raise _Closed(f"malformed frame: {e}") from None


def _scopes(req) -> tuple[str, ...]:
    s = req.get("scopes")
    if s is None or isinstance(s, str):
        return parse_scopes(s)
    if not isinstance(s, list) or not all(isinstance(x, str) for x in s):
        raise BadInput("scopes: a list of scope names or a comma-separated string")
    tables("nat", s)          # validates the names
    return tuple(s)


def _filter(req) -> F.Filter:
    f = req.get("filter")
    if f is not None and not isinstance(f, str):
        raise BadInput("filter: a string such as 'proto=udp src=10.0.1.0/24'")
    return F.parse(f)


def _int(req, name, default, lo, hi) -> int:
    v = req.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadInput(f"{name}: an integer in {lo}..{hi}, not {v!r}")
    return v


def _xdp_attached(ns: str, ifname: str) -> int | None:
    """The XDP program id attached to an interface, None if none (or unknown)."""
    try:
        out = subprocess.run(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", ifname],
                             capture_output=True, text=True, timeout=5).stdout
        link = json.loads(out)[0]
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
    xdp = link.get("xdp") or {}
    prog = xdp.get("prog") or {}
    if not prog and xdp.get("attached"):
        prog = xdp["attached"][0].get("prog") or {}
    return prog.get("id")


class Agent(MoveOps):
    def __init__(self, testbed: str, instance: str, port: int | None = None):
        from ..testbed import state
        rec = state.load(testbed)
        node = rec.get("nodes", {}).get(instance)
        nfs = [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]
        if not node or node.get("role") != "nf":
            raise NotFound(f"no NF instance {instance!r} in testbed {testbed}",
                           hint=f"instances: {', '.join(nfs) or 'none'}")
        if "pin" not in node or "kind" not in node:
            raise NotFound(f"instance {instance} of {testbed} was never built (no pins recorded)")
        mg = rec.get("mgmt") or {}
        if instance not in mg.get("agents", {}):
            raise NotFound(f"testbed {testbed} has no management address for {instance}")
        if not rec.get("token"):
            raise NfxError(f"testbed {testbed} has no token (built by an older nfx)", hint="rebuild it")
        self.testbed, self.instance = testbed, instance
        self.kind, self.ns, self.pin = node["kind"], node["ns"], Path(node["pin"])
        self.wiring = node.get("wiring", [])
        self.addr = mg["agents"][instance]
        self.port = port or (node.get("agent") or {}).get("port") or PORT
        self._token = rec["token"].encode()
        self.started = time.time()
        self.lock = threading.Lock()          # serialises mark/filter writes (gate config)
        self.hubs: dict[str, streams.Hub] = {}
        self.nf = None
        self._settle_lock, self._settle_timer = threading.Lock(), None
        self.listener: socket.socket | None = None
        self.handlers = {op: getattr(self, "op_" + op) for op in OPS + MOVE_OPS}
        self.requests = 0

    # ---- lifecycle ----
    def start(self) -> None:
        """Enter the instance's netns for good (threads made later inherit it), reopen the pinned
        maps, and listen on the management address."""
        self._ns = netns.enter(self.ns)
        self._ns.__enter__()
        self._adopt()
        self.layout = L.layout_hash(self.kind)
        if not (self.pin / "prog").exists():
            log.warning("no pinned program at %s: the instance may not be attached", self.pin / "prog")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 3.0
        while True:
            try:
                s.bind((self.addr, self.port))
                break
            except OSError as e:
                # a killed predecessor may still be closing its listener: wait a moment for it
                if e.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                s.close()
                raise NfxError(f"cannot listen on {self.addr}:{self.port} in {self.ns}: {e.strerror}",
                               hint="is another agent of this instance running? nfx nf list") from None
        s.listen(128)
        self.listener = s
        log.info("agent %s/%s (%s) pid %d: %d maps from %s, listening on %s:%d in %s, layout %s",
                 self.testbed, self.instance, self.kind, os.getpid(), len(self.nf.maps), self.pin,
                 self.addr, self.port, self.ns, self.layout)

    def _pins(self) -> dict[str, int]:
        """Pin name -> inode: a pin replaced by another object gets another inode."""
        out = {}
        try:
            names = os.listdir(self.pin)
        except OSError:
            return out
        for n in names:
            try:
                out[n] = os.stat(self.pin / n).st_ino
            except OSError:
                pass
        return out

    def _adopt(self) -> None:
        from ..testbed.builder import nf_class
        pins = self._pins()
        self.nf = nf_class(self.kind).open(self.instance, self.pin)
        self._pinned = pins
        self.adoptions = getattr(self, "adoptions", 0) + 1
        self._warm_ring()

    def _current(self) -> None:
        """Re-adopt the pins when they changed under us (a hot upgrade re-pins maps and program)."""
        if self._pins() == self._pinned:
            return
        with self.lock:
            if self._pins() != self._pinned:
                log.info("pins under %s changed: re-adopting the instance's maps", self.pin)
                self._adopt()
                for h in self.hubs.values():
                    h.nf = self.nf

    def serve_forever(self) -> None:
        FrontDoor(self.listener, self._token, self._hand_over, self._count).serve_forever()

    def _count(self) -> None:
        self.requests += 1

    def _hand_over(self, conn, who: str, first: dict) -> None:
        threading.Thread(target=self._connection, args=(conn, who, first), daemon=True,
                         name=f"conn-{who}").start()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    # ---- one connection ----
    def _connection(self, sock: socket.socket, who: str, first: dict | None = None) -> None:
        """An authenticated connection (its first request, already read, in `first`)."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(IDLE_S)      # every read and write; a connection idle that long ends
        r = wire.Reader(sock, max_frame=FRAME_MAX)
        try:
            if first is not None:
                self._request(sock, r, first, who, counted=True)    # counted at the front door
            while True:
                try:
                    h = r.header()
                except wire.WireError as e:
                    # out of step: nothing after this can be trusted
                    _send(sock, error_frame(BadInput(f"malformed frame: {e}; closing the connection")))
                    log.warning("%s: malformed frame: %s", who, e)
                    _linger_close(sock)
                    return
                if h is None:
                    return
                kind, length = h
                if kind != wire.JSON:
                    r.skip(length)
                    _send(sock, error_frame(BadInput(
                        f"expected a JSON request frame, got a {KIND_NAMES[kind]} frame ({length} bytes): ignored")))
                    continue
                if length > REQUEST_MAX:
                    r.skip(length)
                    _send(sock, error_frame(BadInput(f"request frame of {length} bytes is over the "
                                                     f"{REQUEST_MAX}-byte limit: ignored")))
                    continue
                try:
                    req = r.body(kind, length)
                except wire.WireError as e:
                    _send(sock, error_frame(BadInput(f"malformed request: {e}")))
                    continue
                self._request(sock, r, req, who)
        except (_Closed, ConnectionError, socket.timeout, wire.WireError) as e:
            log.info("%s: connection ended: %s", who, e)
        except OSError as e:
            log.info("%s: connection ended: %s", who, e)
        except Exception:
            log.exception("%s: connection handler failed", who)
        finally:
            sock.close()

    def _request(self, sock, r, req: dict, who: str, counted: bool = False) -> None:
        op = req.get("op")
        token = req.get("token")
        self.requests += not counted
        if not token_ok(token, self._token):
            log.warning("%s: %s refused: %s", who, op, "no token" if token is None else "wrong token")
            _send(sock, error_frame(refused(token), op))
            if op == "put":
                self._drain(r, sock)
            return
        if not isinstance(op, str) or op not in self.handlers:
            _send(sock, error_frame(BadInput(f"unknown op {op!r}: ops are {', '.join(OPS)}")))
            return
        log.info("%s: %s", who, op)
        t0 = time.perf_counter()
        if op != "ping":
            try:
                self._current()
            except NfxError as e:
                log.warning("%s: re-adopting the pins failed: %s", who, e)
                _send(sock, error_frame(e, op))
                if op == "put":
                    self._drain(r, sock)
                return
        try:
            res = self.handlers[op](sock, r, req)
            if res is not None:
                _send(sock, wire.encode_json({"ok": True, "op": op, **res}))
        except (_Closed, ConnectionError, BrokenPipeError):
            raise
        except NfxError as e:
            log.warning("%s: %s failed: %s", who, op, e)
            _send(sock, error_frame(e, op))
        except Exception as e:
            # unexpected: say so, then end the connection (a stream may be half read)
            log.exception("%s: %s failed", who, op)
            _send(sock, error_frame(e, op))
            _linger_close(sock)
            raise _Closed(f"{op} failed: {e!r}") from None
        else:
            log.info("%s: %s done in %.3f s", who, op, time.perf_counter() - t0)

    def _drain(self, r, sock) -> None:
        """Skip a refused put's chunks up to its END, so the connection stays in step."""
        while True:
            h = _header(r, sock)
            if h is None:
                raise _Closed("closed during a put")
            kind, length = h
            if kind == wire.END:
                r.skip(length)
                return
            r.skip(length)

    # ---- ops ----
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
                "xdp": {i: _xdp_attached(self.ns, i) for i in self.wiring},
                "maps": maps, "tables": [{"name": t.name, "scope": t.scope} for t in tables(self.kind)],
                "streams": sorted(streams.REGISTRY), "requests": self.requests, "adoptions": self.adoptions}

    def op_stats(self, sock, r, req) -> dict:
        return {"instance": self.instance, "stats": self.nf.stats()}

    def _export(self, req) -> tuple[list, dict]:
        scopes, flt = _scopes(req), _filter(req)
        ce = _int(req, "chunk_entries", ops.CHUNK_ENTRIES, 1, 1 << 22)
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
        out: dict[str, list] = {}
        errors = []

        def work(scope):
            try:
                out[scope] = list(ops.export(self.nf, (scope,), flt, ce))
            except BaseException as e:      # re-raised below, in the request's thread
                errors.append(e)
        ts = [threading.Thread(target=work, args=(sc,), name=f"export-{sc}") for sc in scopes]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        chunks = [c for sc in scopes for c in out[sc]]
        for i, c in enumerate(chunks):
            c.seq = i
        return chunks

    def op_get(self, sock, r, req) -> None:
        chunks, summary = self._export(req)
        _send(sock, wire.encode_json({"ok": True, "op": "get", **summary}))
        t0 = time.perf_counter()
        for c in chunks:
            _send(sock, wire.encode_chunk(c))
        _send(sock, wire.encode_json({"chunks": summary["chunks"], "entries": summary["entries"],
                                      "bytes": summary["bytes"], "send_s": time.perf_counter() - t0}, wire.END))
        return None

    def op_put(self, sock, r, req) -> dict:
        """Take every chunk up to END, check them all, then apply: a put with one bad chunk (or of
        another layout) changes nothing."""
        t0 = time.perf_counter()
        chunks, problem, end = [], None, None
        while True:
            h = _header(r, sock)
            if h is None:
                raise _Closed("closed during a put")
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
        out, errors = [None] * len(cpus), []

        def work(i):
            try:
                os.sched_setaffinity(0, {cpus[i]})       # this thread only
                out[i] = fn(groups[i])
            except BaseException as e:
                errors.append(e)
        ts = [threading.Thread(target=work, args=(i,), name=f"cpu{cpus[i]}") for i in range(len(cpus))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        return out

    def _apply(self, chunks: list, parallel: bool) -> dict:
        """ops.put, spread over the CPUs when there is enough to do."""
        outs = self._spread(lambda g: ops.put(self.nf, g), chunks, parallel)
        return {"applied": sorted(a for o in outs for a in o["applied"]),
                "failed": [f for o in outs for f in o["failed"]], "entries": sum(o["entries"] for o in outs)}

    def op_del(self, sock, r, req) -> dict:
        scopes, flt = _scopes(req), _filter(req)
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
        return {"deleted": d, "entries": sum(d.values())}

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
        """Where instance `to` of this testbed listens, from the registry. State goes to the
        testbed's own instances only: `addr`/`port`, if given, must be that instance's."""
        from ..testbed import state
        rec = state.load(self.testbed)
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
        from .client import AgentClient
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

    # ---- marks and filters: what moves flip ----
    def _flow_keys(self, req) -> np.ndarray:
        """16-byte flow keys (as a uint8 matrix) named by `flows` and/or selected by `filter`,
        each with its other direction (NAT: the translated key)."""
        out = []
        flows = req.get("flows") or []
        if not isinstance(flows, list):
            raise BadInput("flows: a list of {src, dst, sport, dport, proto}")
        for f in flows:
            if not isinstance(f, dict):
                raise BadInput(f"flows: {f!r} is not an object")
            try:
                k = make_key(f["src"], f["dst"], int(f.get("sport", 0)), int(f.get("dport", 0)), f.get("proto", 0))
            except KeyError as e:
                raise BadInput(f"flows: {f} lacks {e}") from None
            except (TypeError, ValueError):
                raise BadInput(f"flows: bad port in {f}") from None
            out.append(bytes(k))
            if self.kind == "nat":
                for t in ("nat_fwd", "nat_rev"):
                    e = self.nf.maps[t].get(k)
                    if e is not None:
                        out.append(bytes(e.peer))
            else:
                out.append(bytes(reverse(k)))
        keys = np.frombuffer(b"".join(out), dtype=np.uint8).reshape(-1, KEY_BYTES) if out else \
            np.zeros((0, KEY_BYTES), dtype=np.uint8)
        if req.get("filter") is not None:
            flt = _filter(req)
            parts = [keys]
            for c in ops.export(self.nf, ("per-flow",), flt):
                if c.key_size != KEY_BYTES:
                    continue
                k = np.frombuffer(c.keys, dtype=np.uint8).reshape(c.count, KEY_BYTES)
                parts.append(k)
                if c.table in ("nat_fwd", "nat_rev"):
                    v = np.frombuffer(c.values, dtype=np.uint8).reshape(c.count, -1)[:, :KEY_BYTES]
                    parts.append(v)
                elif self.kind != "nat":
                    rk = k.copy().view(F.FLOW_DTYPE).reshape(c.count)
                    sw = rk.copy()
                    sw["saddr"], sw["daddr"] = rk["daddr"], rk["saddr"]
                    sw["sport"], sw["dport"] = rk["dport"], rk["sport"]
                    parts.append(sw.view(np.uint8).reshape(c.count, KEY_BYTES))
            keys = np.concatenate(parts)
        if len(keys):
            keys = np.unique(keys, axis=0)
        return keys

    @staticmethod
    def _keys_array(keys: np.ndarray):
        return (L.FlowKey * len(keys)).from_buffer(bytearray(keys.tobytes()))

    def op_mark(self, sock, r, req) -> dict:
        action = action_num(req.get("action", "process"))
        peer = _int(req, "peer", 0, 0, 0xFFFFFFFF)
        tag = _int(req, "tag", 0, 0, 0xFFFFFFFF)
        epoch = _int(req, "epoch", 0, 0, 0xFFFFFFFF)
        keys = self._flow_keys(req)
        with self.lock:
            Gate(self.nf).mark(self._keys_array(keys), action, epoch=epoch, peer=peer, tag=tag)
        return {"marked": len(keys), "action": ACTION_NAMES[action]}

    def op_unmark(self, sock, r, req) -> dict:
        with self.lock:
            done = Gate(self.nf).unmark(None if req.get("all") else self._keys_array(self._flow_keys(req)))
        return {"unmarked": done}

    def op_marks(self, sock, r, req) -> dict:
        limit = _int(req, "limit", 10000, 0, 1 << 24)
        n, keys, vals = self.nf.maps["nfx_marks"].export()
        marks = []
        for i in range(min(n, limit)):
            v = vals[i]
            m = {f: getattr(v, f) for f, _ in L.Mark._fields_ if f not in ("lock", "pad")}
            m["action"] = ACTION_NAMES.get(v.action, v.action)
            marks.append({"flow": key_fields(keys[i]), **m})
        filters = []
        fm = self.nf.maps["nfx_filters"]
        for slot in range(L.MAX_FILTERS):
            f = fm.get(L.u32(slot))
            if f is not None and f.flags & L.FILTER_USED:
                filters.append({"slot": slot, "src": _prefix_str(f.saddr, f.smask), "dst": _prefix_str(f.daddr, f.dmask),
                                "sport": socket.ntohs(f.sport), "dport": socket.ntohs(f.dport), "proto": f.proto,
                                "action": ACTION_NAMES.get(f.action, f.action), "bidir": bool(f.flags & L.FILTER_BIDIR),
                                "peer": f.peer, "tag": f.tag})
        g = self.nf._gate_cfg()
        return {"count": n, "marks": marks, "filters": filters, "gate": {"marks": g.marks, "filters": g.filters}}

    def op_filter(self, sock, r, req) -> dict:
        slot = _int(req, "slot", None, 0, L.MAX_FILTERS - 1) if "slot" in req else None
        if slot is None:
            raise BadInput(f"filter needs 'slot' (0..{L.MAX_FILTERS - 1})")
        if req.get("clear"):
            with self.lock:
                Gate(self.nf).clear_filter(slot)
            return {"slot": slot, "cleared": True}
        flt = _filter(req)
        check_ports(flt)          # refused before anything changes
        action = action_num(req.get("action", "process"))
        bidir = bool(req.get("bidir", True))
        peer, tag = _int(req, "peer", 0, 0, 0xFFFFFFFF), _int(req, "tag", 0, 0, 0xFFFFFFFF)
        with self.lock:
            Gate(self.nf).set_filter(slot, flt, action, peer=peer, tag=tag, bidir=bidir)
        return {"slot": slot, "filter": flt.text, "action": ACTION_NAMES[action], "bidir": bidir}

    # ---- events ----
    def _hub(self, st: streams.Stream) -> streams.Hub:
        with self.lock:
            if st.name not in self.hubs:
                self.hubs[st.name] = streams.Hub(st, self.nf)
            return self.hubs[st.name]

    def op_subscribe(self, sock, r, req) -> None:
        names = req.get("streams") or ["stats"]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadInput("streams: a list of stream names")
        interval = req.get("interval", 1.0)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.05 <= interval <= 3600:
            raise BadInput("interval: seconds between stats events, 0.05..3600")
        params = {"interval": float(interval)}
        own, joined, unavailable = {}, {}, {}
        try:
            for n in names:
                st = streams.REGISTRY.get(n)
                if st is None:
                    unavailable[n] = f"unknown stream (streams: {', '.join(sorted(streams.REGISTRY))})"
                    continue
                try:
                    if st.exclusive:
                        hub = self._hub(st)
                        joined[n] = (hub, hub.join(params))
                    else:
                        own[n] = st.factory(self.nf, params)
                except Exception as e:
                    unavailable[n] = str(e)
            if not own and not joined:
                raise BadInput("no stream to subscribe to: " +
                               "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
            _send(sock, wire.encode_json({"ok": True, "op": "subscribe", "streams": list(own) + list(joined),
                                          "unavailable": unavailable}))
            events = 0
            while True:
                out = []
                for n, src in own.items():
                    out += [(n, ev) for ev in src.poll(0)]
                for n, (hub, q) in joined.items():
                    while len(out) < 4096:
                        try:
                            out.append((n, q.get_nowait()))
                        except Exception:
                            break
                for n, ev in out:
                    _send(sock, wire.encode_json({"stream": n, "ts": time.time(), **jsonable(ev)}))
                events += len(out)
                rd, _, _ = select.select([sock], [], [], 0.01 if out else 0.05)
                if rd:
                    # anything from the client ends the subscription; EOF ends the connection
                    h = _header(r, sock)
                    if h is None:
                        raise _Closed("subscriber left")
                    r.skip(h[1])
                    dropped = sum(hub.dropped for hub, _ in joined.values())
                    _send(sock, wire.encode_json({"events": events, "dropped": dropped}, wire.END))
                    return None
        finally:
            for n, (hub, q) in joined.items():
                hub.leave(q)
            for src in own.values():
                if hasattr(src, "close"):
                    src.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nfx.agent",
                                 description="Serve one NF instance's state on the management network.")
    ap.add_argument("--testbed", required=True)
    ap.add_argument("--instance", required=True)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--log", default=None, help="log file (default: stderr)")
    ap.add_argument("--ready-fd", type=int, default=None, help="write 'ready <pid>' here once serving")
    a = ap.parse_args(argv)
    fmt = "%(asctime)s %(process)d %(threadName)s %(levelname)s %(message)s"
    if a.log:
        logging.basicConfig(filename=a.log, level=logging.INFO, format=fmt)
    else:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=fmt)

    def stop(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent = Agent(a.testbed, a.instance, a.port)
        agent.start()
    except NfxError as e:
        log.error("cannot start: %s%s", e, f" ({e.hint})" if e.hint else "")
        print(f"nfx agent: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    if a.ready_fd is not None:
        try:
            os.write(a.ready_fd, f"ready {os.getpid()}\n".encode())
            os.close(a.ready_fd)
        except OSError:
            pass
    try:
        agent.serve_forever()
    finally:
        agent.close()
        log.info("agent %s/%s stopped", a.testbed, a.instance)
