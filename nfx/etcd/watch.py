"""Watching a key prefix: the gateway's /v3/watch is one long POST whose reply streams a JSON object
per line ({"result": {"events": [...]}}); a thread reads it and hands each event to a callback."""
import http.client
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import NfxError
from .client import Etcd, Key, _dec, _enc, prefix_end


@dataclass(frozen=True)
class Event:
    type: str               # "PUT" or "DELETE"
    key: bytes
    value: bytes            # b"" for a DELETE
    mod_revision: int


class Watch:
    """Calls `callback(Event)` for every change under `prefix` from `start_revision` (default: from
    now) until stop(). `ready` is set once etcd has created the watch, so changes after it are seen.
    If the stream breaks (etcd gone) the thread ends with `error` set; it does not reconnect."""

    def __init__(self, etcd: Etcd, prefix: Key, callback: Callable[[Event], None], start_revision: int | None = None,
                 on_error: Callable[[NfxError], None] | None = None):
        self.etcd, self.callback, self.on_error = etcd, callback, on_error
        req = {"key": _enc(prefix), "range_end": _enc(prefix_end(prefix))}
        if start_revision:
            req["start_revision"] = str(int(start_revision))
        self._body = json.dumps({"create_request": req})
        self.ready = threading.Event()
        self.error: NfxError | None = None
        self.last_revision = 0
        self._stopping = False
        self._conn: http.client.HTTPConnection | None = None
        self._t = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self._t.start()
        if not self.ready.wait(etcd.timeout + 1) and self.error is None:
            self.stop()
            raise NfxError(f"etcd at {etcd.url}: the watch was not created within {etcd.timeout} s")
        if self.error is not None:
            raise self.error

    def _run(self):
        try:
            self._conn = c = self.etcd._connect(self.etcd.timeout)
            c.request("POST", "/v3/watch", self._body, {"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                self.etcd._raise_for("/v3/watch", r.status, r.read())
            c.sock.settimeout(None)          # events may be far apart; stop() shuts the socket
            while True:
                line = r.readline()
                if not line:
                    break
                if line.strip():
                    self._handle(json.loads(line))
            if not self._stopping:
                raise self.etcd._down("/v3/watch", ConnectionError("the stream ended"))
        except NfxError as e:
            self._fail(e)
        except (OSError, http.client.HTTPException, ValueError) as e:
            if not self._stopping:
                self._fail(self.etcd._down("/v3/watch", e))
        finally:
            self.ready.set()

    def _fail(self, e: NfxError):
        self.error = e
        if self.on_error and self.ready.is_set():
            self.on_error(e)

    def _handle(self, msg: dict):
        if "error" in msg:
            raise NfxError(f"etcd watch at {self.etcd.url}: {msg['error'].get('message', msg['error'])}")
        res = msg.get("result", {})
        if res.get("created"):
            self.ready.set()
        if res.get("canceled"):
            raise NfxError(f"etcd at {self.etcd.url} canceled the watch: {res.get('cancel_reason', '')}")
        for ev in res.get("events", []):
            kv = ev.get("kv", {})
            rev = int(kv.get("mod_revision", 0))
            self.last_revision = max(self.last_revision, rev)
            self.callback(Event(ev.get("type", "PUT"), _dec(kv.get("key")), _dec(kv.get("value")), rev))

    @property
    def alive(self) -> bool:
        return self._t.is_alive()

    def stop(self) -> None:
        self._stopping = True
        c = self._conn
        if c is not None and c.sock is not None:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._t.join(timeout=self.etcd.timeout + 1)
        if c is not None:
            c.close()
