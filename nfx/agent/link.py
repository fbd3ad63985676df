"""An emulated link (the kernel here has no netem): the control link to agents and switches, and
the data link an agent puts between itself and a peer. A one-way delay and an optional rate,
per direction, FIFO. Frames are stamped when they enter the link and come out at
max(entry, link free) + size/rate + delay, so a stream of frames is pipelined: ten frames sent
back to back arrive one delay later, not ten.

`DelayedConn` puts a connection behind two such links: writes are queued and sent by a writer
thread when due; a reader thread takes frames off the socket as they come and hands each over
when it is due."""
import queue
import socket
import threading
import time

from ..state import wire


class Link:
    def __init__(self, delay_s: float = 0.0, rate_bps: float = 0.0):
        if delay_s < 0 or rate_bps < 0:
            raise ValueError("a link's delay and rate must be >= 0")
        self.delay, self.rate = delay_s, rate_bps
        self.free = 0.0
        self.lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.delay or self.rate)

    def due(self, nbytes: int, entered: float | None = None) -> float:
        """When a frame of `nbytes` entering now (or at `entered`, monotonic) comes out."""
        t = time.monotonic() if entered is None else entered
        with self.lock:
            start = max(t, self.free)
            self.free = start + (nbytes * 8 / self.rate if self.rate else 0.0)
            return self.free + self.delay

    def pass_(self, nbytes: int, entered: float | None = None) -> None:
        """Block until a frame sent now comes out at the far end."""
        sleep_until(self.due(nbytes, entered))


def sleep_until(t: float) -> None:
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


_pairs: dict[tuple, tuple[Link, Link]] = {}
_pairs_lock = threading.Lock()


def pair(end: tuple, delay_ms: float, rate_mbit: float = 0.0) -> tuple[Link, Link]:
    """The (up, down) links of one control-channel end (an agent, a switch): every connection
    to it in this process shares them, as they would share one wire."""
    key = (end, float(delay_ms), float(rate_mbit))
    with _pairs_lock:
        if key not in _pairs:
            _pairs[key] = (Link(delay_ms / 1e3, rate_mbit * 1e6), Link(delay_ms / 1e3, rate_mbit * 1e6))
        return _pairs[key]


class DelayedConn:
    """A socket behind an (up, down) link pair. write() does not block on the link; frame()
    returns the next frame once it is due (or raises what the reader met)."""

    def __init__(self, sock: socket.socket, up: Link, down: Link):
        self.sock, self.up, self.down = sock, up, down
        sock.settimeout(None)          # the reader blocks; frame() applies the timeout
        self.rq: queue.Queue = queue.Queue()
        self.wq: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.reader = threading.Thread(target=self._read, daemon=True, name="link-rx")
        self.writer = threading.Thread(target=self._write, daemon=True, name="link-tx")
        self.reader.start()
        self.writer.start()

    def _read(self) -> None:
        r = wire.Reader(self.sock)
        try:
            while True:
                h = r.header()
                if h is None:
                    self.rq.put((0.0, None))
                    return
                fr = (h[0], r.body(*h))
                self.rq.put((self.down.due(wire.HDR.size + h[1]), fr))
        except BaseException as e:     # handed to whoever reads next
            self.rq.put((0.0, e))

    def _write(self) -> None:
        while True:
            item = self.wq.get()
            if item is None:
                return
            entered, parts = item
            try:
                sleep_until(self.up.due(sum(len(p) for p in parts), entered))
                wire.write(self.sock, parts)
            except BaseException as e:
                self.error = self.error or e

    def write(self, parts) -> None:
        if self.error is not None:
            raise self.error
        self.wq.put((time.monotonic(), list(parts)))

    def frame(self, timeout: float | None):
        """The next frame (kind, payload) when due; None at EOF; raises queue.Empty on timeout."""
        due, fr = self.rq.get(timeout=timeout)
        if isinstance(fr, BaseException):
            self.rq.put((0.0, fr))        # stays broken
            raise fr
        sleep_until(due)
        return fr

    def close(self) -> None:
        self.wq.put(None)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
