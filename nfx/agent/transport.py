"""The agent's wire: it listens on the instance's management address; one thread
(nfx/agent/handshake.py) holds every connection until it sends a request with the testbed's
token, then it gets a thread of its own, which reads request frames and dispatches each op to its
handler (`op_<name>`, in the ops modules). A bad request gets an ERROR frame; it never ends the
agent. Also the request arguments the ops share, and `main` (python -m nfx.agent). See
nfx/agent/PROTOCOL.md."""
import argparse
import base64
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time

from ..errors import BadInput, NfxError
from .. import filter as F
from ..state import wire
from ..state.tables import parse_scopes, tables
from .handshake import FrontDoor, refused, token_ok
from .protocol import FRAME_MAX, IDLE_S, OPS, REQUEST_MAX, error_frame

log = logging.getLogger("nfx.agent")
KIND_NAMES = wire.KIND_NAMES


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


class Closed(Exception):
    """The peer went away mid-request."""


def send_frames(sock, parts) -> int:
    return wire.write(sock, parts)


def read_header(r, sock):
    """The next frame header inside a request (a put's chunks, a subscriber's stop): a stream out
    of step ends the connection, after an ERROR that says so."""
    try:
        return r.header()
    except wire.WireError as e:
        send_frames(sock, error_frame(BadInput(f"malformed frame: {e}; nothing was applied; closing the connection")))
        _linger_close(sock)
        raise Closed(f"malformed frame: {e}") from None


# ---- request arguments the ops share ----
def arg_scopes(req) -> tuple[str, ...]:
    s = req.get("scopes")
    if s is None or isinstance(s, str):
        return parse_scopes(s)
    if not isinstance(s, list) or not all(isinstance(x, str) for x in s):
        raise BadInput("scopes: a list of scope names or a comma-separated string")
    tables("nat", s)          # validates the names
    return tuple(s)


def arg_filter(req) -> F.Filter:
    f = req.get("filter")
    if f is not None and not isinstance(f, str):
        raise BadInput("filter: a string such as 'proto=udp src=10.0.1.0/24'")
    return F.parse(f)


def arg_bytes(req, name, default=b"") -> bytes:
    """A request's bytes argument (base64 on the wire)."""
    v = req.get(name)
    if v is None:
        return default
    try:
        return base64.b64decode(v, validate=True)
    except Exception:
        raise BadInput(f"{name} is not base64") from None


def arg_int(req, name, default, lo, hi) -> int:
    v = req.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadInput(f"{name}: an integer in {lo}..{hi}, not {v!r}")
    return v


class Transport:
    """Mixed into the agent (nfx/agent/server.py): needs the instance (nfx/agent/instance.py) and
    an `op_<name>` method for each name in `ops`."""

    ops: tuple = OPS
    listener: socket.socket | None = None
    requests = 0

    def start(self) -> None:
        """Open the instance (its netns for good: threads made later inherit it; its pinned
        maps), then listen on the management address."""
        self.open()
        self.handlers = {op: getattr(self, "op_" + op) for op in self.ops}
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
                    send_frames(sock, error_frame(BadInput(f"malformed frame: {e}; closing the connection")))
                    log.warning("%s: malformed frame: %s", who, e)
                    _linger_close(sock)
                    return
                if h is None:
                    return
                kind, length = h
                if kind != wire.JSON:
                    r.skip(length)
                    send_frames(sock, error_frame(BadInput(
                        f"expected a JSON request frame, got a {KIND_NAMES[kind]} frame ({length} bytes): ignored")))
                    continue
                if length > REQUEST_MAX:
                    r.skip(length)
                    send_frames(sock, error_frame(BadInput(f"request frame of {length} bytes is over the "
                                                     f"{REQUEST_MAX}-byte limit: ignored")))
                    continue
                try:
                    req = r.body(kind, length)
                except wire.WireError as e:
                    send_frames(sock, error_frame(BadInput(f"malformed request: {e}")))
                    continue
                self._request(sock, r, req, who)
        except (Closed, ConnectionError, socket.timeout, wire.WireError) as e:
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
            send_frames(sock, error_frame(refused(token), op))
            if op == "put":
                self._drain(r, sock)
            return
        if not isinstance(op, str) or op not in self.handlers:
            send_frames(sock, error_frame(BadInput(f"unknown op {op!r}: ops are {', '.join(OPS)}")))
            return
        log.info("%s: %s", who, op)
        t0 = time.perf_counter()
        if op != "ping":
            try:
                self._current()
            except NfxError as e:
                log.warning("%s: re-adopting the pins failed: %s", who, e)
                send_frames(sock, error_frame(e, op))
                if op == "put":
                    self._drain(r, sock)
                return
        try:
            res = self.handlers[op](sock, r, req)
            if res is not None:
                send_frames(sock, wire.encode_json({"ok": True, "op": op, **res}))
        except (Closed, ConnectionError, BrokenPipeError):
            raise
        except NfxError as e:
            log.warning("%s: %s failed: %s", who, op, e)
            send_frames(sock, error_frame(e, op))
        except Exception as e:
            # unexpected: say so, then end the connection (a stream may be half read)
            log.exception("%s: %s failed", who, op)
            send_frames(sock, error_frame(e, op))
            _linger_close(sock)
            raise Closed(f"{op} failed: {e!r}") from None
        else:
            log.info("%s: %s done in %.3f s", who, op, time.perf_counter() - t0)

    def _drain(self, r, sock) -> None:
        """Skip a refused put's chunks up to its END, so the connection stays in step."""
        while True:
            h = read_header(r, sock)
            if h is None:
                raise Closed("closed during a put")
            kind, length = h
            if kind == wire.END:
                r.skip(length)
                return
            r.skip(length)


def main(make_agent, argv=None) -> None:
    """Run one agent: `make_agent(testbed, instance, port)` (nfx/agent/server.py's Agent)."""
    ap = argparse.ArgumentParser(prog="python -m nfx.agent",
                                 description="Serve one NF instance's state on the management network.")
    ap.add_argument("--testbed", required=True)
    ap.add_argument("--instance", required=True)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--log", default=None, help="log file (default: stderr)")
    ap.add_argument("--ready-fd", type=int, default=None, help="write 'ready <pid>' here once serving")
    ap.add_argument("--go-fd", type=int, default=None,
                    help="wait for 'go' here before reading the registry (started ahead of the instance's build); "
                         "end at once on anything else")
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
    if a.go_fd is not None:
        with os.fdopen(a.go_fd, "rb") as go:
            if go.readline().strip() != b"go":
                log.info("agent %s/%s not needed after all: ended before it started", a.testbed, a.instance)
                sys.exit(0)
    try:
        agent = make_agent(a.testbed, a.instance, a.port)
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
