"""The agent's subscriptions (`subscribe`, nfx/agent/PROTOCOL.md): event streams from
nfx/agent/streams.py, sent as JSON frames until the subscriber sends anything. An exclusive source
runs once per stream, in a hub, and fans out to every subscriber."""
import select
import time

from ..errors import BadInput
from ..state import wire
from . import streams
from .protocol import jsonable
from .transport import Closed, read_header, send_frames


class SubscribeOps:
    """Mixed into the agent (nfx/agent/server.py): needs the instance (nfx/agent/instance.py)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.hubs: dict[str, streams.Hub] = {}

    def _adopted(self) -> None:
        super()._adopted()
        for h in self.hubs.values():          # the hubs poll the new maps from now on
            h.nf = self.nf

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
            send_frames(sock, wire.encode_json({"ok": True, "op": "subscribe", "streams": list(own) + list(joined),
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
                    send_frames(sock, wire.encode_json({"stream": n, "ts": time.time(), **jsonable(ev)}))
                events += len(out)
                # wake for a source's next event on time (a stats event 50 ms late is jitter)
                wait = min([0.01 if out else 0.05] + [max(0.0, src.wait_s()) for src in own.values()
                                                      if hasattr(src, "wait_s")])
                rd, _, _ = select.select([sock], [], [], wait)
                if rd:
                    # anything from the client ends the subscription; EOF ends the connection
                    h = read_header(r, sock)
                    if h is None:
                        raise Closed("subscriber left")
                    r.skip(h[1])
                    dropped = sum(hub.dropped for hub, _ in joined.values())
                    send_frames(sock, wire.encode_json({"events": events, "dropped": dropped}, wire.END))
                    return None
        finally:
            for n, (hub, q) in joined.items():
                hub.leave(q)
            for src in own.values():
                if hasattr(src, "close"):
                    src.close()
