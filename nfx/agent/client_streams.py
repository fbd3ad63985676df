"""The streams that hold an AgentClient's connection while they last: a move_dist in flight
(DistStream) and a subscription's events (Subscription). Both read and write through the
client's own transport; the client opens them (AgentClient.move_dist, .subscribe)."""
import time
from typing import TYPE_CHECKING

from ..errors import NfxError, from_wire
from ..state import wire

if TYPE_CHECKING:
    from .client import AgentClient


class DistStream:
    """A move_dist in flight (AgentClient.move_dist): held(), go() (lf/op without ov), done();
    close() in any case. Closed before done, while the agent has more to send, it closes the
    connection: it is out of step."""

    def __init__(self, client: "AgentClient"):
        self.client = client
        self.finished = False

    def _next(self, want: int) -> dict:
        c = self.client
        kind, obj = c.read_frame()
        if kind == wire.ERROR:
            self.finished = True
            from_wire(obj, f"{c.instance}: ")
        if kind != want:
            c.close()
            raise NfxError(f"unexpected frame kind {kind} from {c.instance} during a move")
        return obj

    def held(self) -> dict:
        """The flows are held (enableEvent's ack): flows, ibc, outside, as the agent sent them."""
        return self._next(wire.JSON)

    def go(self) -> None:
        """MovePerFlow, after held(): the source starts the push."""
        self.client._write(wire.encode_json({"go": True}))

    def done(self) -> dict:
        """The state is in at dst: the transfer's figures (END)."""
        r = self._next(wire.END)
        self.finished = True
        return r

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self.client.close()


class Subscription:
    """Events of a subscribe request: iterate, or next_event(timeout); close() ends it (the
    connection stays usable)."""

    def __init__(self, client: "AgentClient", reply: dict):
        self.client = client
        self.streams = reply.get("streams", [])
        self.unavailable = reply.get("unavailable", {})
        self.open = True
        self.summary: dict | None = None

    def next_event(self, timeout: float | None = None) -> dict | None:
        """The next event, or None if none came within `timeout` seconds."""
        if not self.open:
            return None
        try:
            fr = self.client.read_frame(wait=timeout)
            if fr is None:
                return None
            kind, obj = fr
        except NfxError:
            self.open = False             # the connection is gone with it
            raise
        if kind == wire.ERROR:
            self.open = False
            from_wire(obj, f"{self.client.instance}: ")
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
        if not self.open or self.client._sock is None:
            self.open = False
            return self.summary
        self.client._write(wire.encode_json({"op": "stop"}))
        while self.open:
            kind, obj = self.client.read_frame()
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
            self.client.close()
