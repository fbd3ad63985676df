"""The streams that hold an AgentClient's connection while they last: a move_dist in flight
(DistStream) and a subscription's events (Subscription). Both read and write through the
client's connection, handed to them as a Channel; the client opens them (AgentClient.move_dist,
.subscribe)."""
import time
from collections.abc import Callable
from typing import NamedTuple

from ..errors import NfxError, from_wire
from ..state import wire


class Channel(NamedTuple):
    """A client's connection as a stream uses it."""
    read: Callable            # read(wait=None) -> (kind, obj), or None if nothing came in `wait` s
    write: Callable           # write(frames)
    close: Callable           # close the connection
    is_open: Callable         # is_open() -> bool
    peer: str                 # the instance, for messages


class DistStream:
    """A move_dist in flight (AgentClient.move_dist): held(), go() (lf/op without ov), done();
    close() in any case. A move_slim is the same exchange with one more JSON answer between
    held() and go(): its "ready" (read with held() again). Closed before done, while the agent has more to send, it closes the
    connection: it is out of step."""

    def __init__(self, ch: Channel):
        self.ch = ch
        self.finished = False

    def _next(self, want: int) -> dict:
        kind, obj = self.ch.read()
        if kind == wire.ERROR:
            self.finished = True
            from_wire(obj, f"{self.ch.peer}: ")
        if kind != want:
            self.ch.close()
            raise NfxError(f"unexpected frame kind {kind} from {self.ch.peer} during a move")
        return obj

    def held(self) -> dict:
        """The flows are held (enableEvent's ack): flows, ibc, outside, as the agent sent them."""
        return self._next(wire.JSON)

    def go(self) -> None:
        """MovePerFlow, after held(): the source starts the push."""
        self.ch.write(wire.encode_json({"go": True}))

    def done(self) -> dict:
        """The state is in at dst: the transfer's figures (END)."""
        r = self._next(wire.END)
        self.finished = True
        return r

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self.ch.close()


class Subscription:
    """Events of a subscribe request: iterate, or next_event(timeout); close() ends it (the
    connection stays usable)."""

    def __init__(self, ch: Channel, reply: dict):
        self.ch = ch
        self.streams = reply.get("streams", [])
        self.unavailable = reply.get("unavailable", {})
        self.open = True
        self.summary: dict | None = None

    def next_event(self, timeout: float | None = None) -> dict | None:
        """The next event, or None if none came within `timeout` seconds."""
        if not self.open:
            return None
        try:
            fr = self.ch.read(wait=timeout)
            if fr is None:
                return None
            kind, obj = fr
        except NfxError:
            self.open = False             # the connection is gone with it
            raise
        if kind == wire.ERROR:
            self.open = False
            from_wire(obj, f"{self.ch.peer}: ")
        if kind == wire.END:
            self.open = False
            self.summary = obj
            return None
        return obj

    def __iter__(self):
        while self.open:
            ev = self.next_event()
            if ev is not None:
                yield ev

    def events(self, seconds: float) -> list[dict]:
        """Everything that arrives within `seconds`."""
        out, end = [], time.monotonic() + seconds
        while self.open and (left := end - time.monotonic()) > 0:
            ev = self.next_event(left)
            if ev is not None:
                out.append(ev)
        return out

    def close(self) -> dict | None:
        """End the subscription: ask the agent to stop and skip events up to its END."""
        if not self.open or not self.ch.is_open():
            self.open = False
            return self.summary
        self.ch.write(wire.encode_json({"op": "stop"}))
        while self.open:
            kind, obj = self.ch.read()
            if kind in (wire.END, wire.ERROR):
                self.open = False
                self.summary = obj
        return self.summary

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        except NfxError:
            self.ch.close()
