"""One watcher thread per instance: it holds the instance's subscription (and, with a flow filter,
polls its per-flow state on a second connection) and puts every event, tagged with the instance,
on a queue the inspector reads. A lost agent becomes an `error` event; the watcher then tries
again every second and says `subscribed` when it is back."""
import queue
import threading
import time

from ..agent.client import AgentClient, Subscription
from ..errors import NfxError
from .flows import FlowTable

RETRY_S = 1.0


def subscribe(testbed: str, instance: str, streams: list[str], interval: float) -> tuple[AgentClient, Subscription]:
    """A subscription of its own connection; raises what the client raises (NotFound, AgentDown, BadInput)."""
    c = AgentClient(testbed, instance, timeout=10)
    try:
        return c, c.subscribe(streams, interval)
    except BaseException:
        c.close()
        raise


def put(out: queue.Queue, stop: threading.Event, ev: dict) -> None:
    """Onto the inspector's queue, waiting while it is full, unless the watch ends meanwhile."""
    while not stop.is_set():
        try:
            out.put(ev, timeout=0.2)
            return
        except queue.Full:
            continue


class Watcher(threading.Thread):
    def __init__(self, testbed: str, instance: str, kind: str | None, first: tuple[AgentClient, Subscription],
                 streams: list[str], interval: float, out: queue.Queue, stop: threading.Event,
                 flow_filter: str | None = None, top: int = 10):
        super().__init__(name=f"inspect-{instance}", daemon=True)
        self.testbed, self.instance, self.kind = testbed, instance, kind
        self.client, self.sub = first
        self.streams, self.interval = streams, interval
        self.out, self.stop = out, stop
        self.flow_filter = flow_filter
        self.flows = FlowTable(kind or "nat", top)
        self.flows_every = max(1.0, interval)
        self.flow_client: AgentClient | None = None
        self.down: str | None = None              # why the agent is lost, while it is

    def _put(self, stream: str, **ev) -> None:
        put(self.out, self.stop, {"instance": self.instance, "stream": stream,
                                  "ts": ev.pop("ts", None) or time.time(), **ev})

    def run(self) -> None:
        try:
            self._subscribed(reconnected=False)
            while not self.stop.is_set():
                try:
                    self._follow()
                except NfxError as e:
                    self._lost(e)
        finally:
            self._close()

    def _subscribed(self, reconnected: bool) -> None:
        self.down = None
        self._put("subscribed", kind=self.kind, streams=self.sub.streams, unavailable=self.sub.unavailable,
                  reconnected=reconnected)

    def _follow(self) -> None:
        next_flows = time.monotonic()
        while not self.stop.is_set():
            if self.flow_filter is not None and time.monotonic() >= next_flows:
                self._poll_flows()
                next_flows = time.monotonic() + self.flows_every
            ev = self.sub.next_event(0.2)
            if ev is not None:
                stream = ev.pop("stream", "?")
                self._put(stream, **ev)
            elif not self.sub.open:
                raise NfxError(f"the agent of {self.instance} ended the subscription ({self.sub.summary})")

    def _poll_flows(self) -> None:
        if self.flow_client is None:
            self.flow_client = AgentClient(self.testbed, self.instance, timeout=10)
        chunks = self.flow_client.get(scopes=("per-flow",), filter=self.flow_filter)
        self._put("flows", filter=self.flow_filter, **self.flows.rows(chunks))

    def _lost(self, e: NfxError) -> None:
        self.down = str(e)
        self._put("error", error=str(e), type=type(e).__name__, hint=e.hint)
        self._close()
        while not self.stop.wait(RETRY_S):
            try:
                self.client, self.sub = subscribe(self.testbed, self.instance, self.streams, self.interval)
            except NfxError as e2:
                self.down = str(e2)
                continue
            self._subscribed(reconnected=True)
            return

    def _close(self) -> None:
        """End the subscription (the agent answers END with its event and drop counts)."""
        sub, client, fc = self.sub, self.client, self.flow_client
        self.sub = self.client = self.flow_client = None
        # a connection the client already dropped (agent lost) has nothing to close
        if sub is not None and sub.open and client is not None and client._sock is not None:
            try:
                summary = sub.close()
                if summary:
                    self._put_final("end", **summary)
            except (NfxError, OSError, AttributeError):
                pass
        for c in (client, fc):
            if c is not None:
                c.close()

    def _put_final(self, stream: str, **ev) -> None:
        """After stop: the reader may be gone; never block."""
        try:
            self.out.put_nowait({"instance": self.instance, "stream": stream, "ts": time.time(), **ev})
        except queue.Full:
            pass
