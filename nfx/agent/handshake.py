"""The agent's front door: one thread, a selector, every connection that has not yet sent a
request with the testbed's token. Nothing unauthenticated gets a thread of its own: the first
frames are read here (exactly as many bytes as the frame needs, so nothing past the
authenticated request is taken from the socket), each at most REQUEST_MAX bytes; a connection
that has not authenticated HANDSHAKE_S after it was accepted is closed, and so is the oldest
one when more than PENDING_MAX wait. Refusals are answered as before (ERROR frames, the
connection stays usable until its deadline); a refused put's chunks are skipped up to its END.
The first accepted request and its socket go to `hand_over(sock, peer, req)`."""
import hmac
import logging
import selectors
import socket
import time
from collections import OrderedDict

from ..errors import BadInput, Refused
from ..state import wire
from .protocol import HANDSHAKE_S, PENDING_MAX, REQUEST_MAX, error_frame

log = logging.getLogger("nfx.agent")
KIND_NAMES = wire.KIND_NAMES
MAX_REFUSALS = 16       # ERROR answers one unauthenticated connection gets before it is closed


class _Pending:
    __slots__ = ("sock", "who", "deadline", "buf", "hdr", "skip_put", "refusals")

    def __init__(self, sock, who: str):
        self.sock, self.who = sock, who
        self.deadline = time.monotonic() + HANDSHAKE_S
        self.buf = bytearray()
        self.hdr = None            # (kind, length) once the header is in
        self.skip_put = False      # a refused put: its chunks are skipped up to END
        self.refusals = 0


def refused(token) -> Refused:
    why = "no token" if token is None else "wrong token"
    return Refused(f"request refused: {why} (every request carries the testbed's token)",
                   hint="the token is in the testbed registry, /run/nfx/testbeds/<name>.json (root only)")


def token_ok(token, expected: bytes) -> bool:
    return isinstance(token, str) and hmac.compare_digest(token.encode(), expected)


class FrontDoor:
    def __init__(self, listener: socket.socket, token: bytes, hand_over, on_request=lambda: None):
        self.listener, self.token, self.hand_over = listener, token, hand_over
        self.on_request = on_request
        self.pending: "OrderedDict[socket.socket, _Pending]" = OrderedDict()
        self.sel = selectors.DefaultSelector()

    def serve_forever(self) -> None:
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        try:
            while self.listener.fileno() >= 0:
                now = time.monotonic()
                first = next(iter(self.pending.values()), None)
                wait = 1.0 if first is None else min(1.0, max(0.0, first.deadline - now))
                for key, _ in self.sel.select(wait):
                    if key.data is None:
                        self._accept()
                    else:
                        try:
                            self._read(key.data)
                        except Exception:        # one bad connection never ends the front door
                            log.exception("%s: handshake failed", key.data.who)
                            self._close(key.data)
                now = time.monotonic()
                while self.pending:
                    p = next(iter(self.pending.values()))      # oldest first: deadlines in order
                    if p.deadline > now:
                        break
                    log.info("%s: no authenticated request within %.0f s: closed", p.who, HANDSHAKE_S)
                    self._close(p)
        finally:
            for p in list(self.pending.values()):
                self._close(p)
            self.sel.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if self.listener.fileno() >= 0:
                    log.warning("accept: %s", e)
                return
            conn.setblocking(False)
            p = _Pending(conn, f"{peer[0]}:{peer[1]}")
            while len(self.pending) >= PENDING_MAX:
                old = next(iter(self.pending.values()))
                log.warning("%s: %d connections wait to authenticate: the oldest is closed", old.who, PENDING_MAX)
                self._close(old)
            self.pending[conn] = p
            self.sel.register(conn, selectors.EVENT_READ, p)

    def _close(self, p: _Pending) -> None:
        self.pending.pop(p.sock, None)
        try:
            self.sel.unregister(p.sock)
        except (KeyError, ValueError):
            pass
        p.sock.close()

    def _send(self, p: _Pending, e: BaseException, op=None) -> bool:
        """An ERROR frame (small: it fits the empty send buffer of a fresh connection). False:
        the connection is closed (gone, or refused too often)."""
        p.refusals += 1
        try:
            p.sock.settimeout(1.0)
            wire.write(p.sock, error_frame(e, op))
            p.sock.setblocking(False)
        except OSError:
            self._close(p)
            return False
        if p.refusals > MAX_REFUSALS:
            log.warning("%s: %d refusals before authenticating: closed", p.who, p.refusals)
            self._close(p)
            return False
        return True

    def _read(self, p: _Pending) -> None:
        while True:
            want = wire.HDR.size - len(p.buf) if p.hdr is None else p.hdr[1] - len(p.buf)
            if want > 0:
                try:
                    got = p.sock.recv(min(want, 1 << 16))
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return self._close(p)
                if not got:
                    return self._close(p)
                p.buf += got
                continue                # until the frame is in or the socket has no more now
            if p.hdr is None:
                try:
                    kind, length = wire.decode_header(bytes(p.buf))
                except wire.WireError as e:
                    self._send(p, BadInput(f"malformed frame: {e}; closing the connection"))
                    log.warning("%s: malformed frame before authenticating: %s", p.who, e)
                    return self._close(p)
                if length > REQUEST_MAX:
                    # not read, not skipped: nobody unauthenticated gets us to read that much
                    self._send(p, BadInput(f"frame of {length} bytes before an accepted request is over the "
                                           f"{REQUEST_MAX}-byte limit; closing the connection"))
                    return self._close(p)
                p.hdr, p.buf = (kind, length), bytearray()
                continue
            (kind, _), payload = p.hdr, bytes(p.buf)
            p.hdr, p.buf = None, bytearray()
            if self._frame(p, kind, payload) or p.sock.fileno() < 0:
                return

    def _frame(self, p: _Pending, kind: int, payload: bytes) -> bool:
        """One whole frame; True once the connection was handed over or closed."""
        if p.skip_put:
            p.skip_put = kind != wire.END
            return False
        if kind != wire.JSON:
            return not self._send(p, BadInput(
                f"expected a JSON request frame, got a {KIND_NAMES[kind]} frame ({len(payload)} bytes): ignored"))
        try:
            req = wire.decode_json(payload)
        except wire.WireError as e:
            return not self._send(p, BadInput(f"malformed request: {e}"))
        self.on_request()
        op, token = req.get("op"), req.get("token")
        if not token_ok(token, self.token):
            log.warning("%s: %s refused: %s", p.who, op, "no token" if token is None else "wrong token")
            p.skip_put = op == "put"
            return not self._send(p, refused(token), op)
        self.pending.pop(p.sock, None)
        self.sel.unregister(p.sock)
        p.sock.setblocking(True)
        self.hand_over(p.sock, p.who, req)
        return True
