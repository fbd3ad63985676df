"""The controller: one process per testbed. Northbound, an HTTP/JSON API on 127.0.0.1 (what the
`nfx move` and `nfx controller` commands call; documented in nfx/control/API.md). Southbound,
it programs the switches (their pinned maps) and talks to the agents on the management network.
It holds OpenNF's packet buffer and reports its peak. `ctrl_delay_ms` emulates a one-way delay
on every control message (agents and switches); the data plane gets none (the kernel has no
netem, so the delay lives in the control-channel transport)."""
import json
import logging
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import BadInput, NfxError
from ..migrate import mechanisms as M
from ..migrate.remote import Remote
from ..paths import RUN_DIR
from ..state.filter import parse
from ..state.tables import parse_scopes
from ..testbed import state
from .steer import Steering

log = logging.getLogger("nfx.controller")


class DelayedSteering:
    """The switches behind a control channel: each rule change or packet-out leaves `delay`
    late and its acknowledgement comes back `delay` later."""

    def __init__(self, steer: Steering, delay_s: float):
        self.s, self.delay = steer, delay_s

    def _rt(self, fn, *a):
        if self.delay:
            time.sleep(self.delay)
        r = fn(*a)
        if self.delay:
            time.sleep(self.delay)
        return r

    def point(self, *a):
        return self._rt(self.s.point, *a)

    def ibc(self, *a):
        if self.delay:                   # a packet-out is not acknowledged
            time.sleep(self.delay)
        return self.s.ibc(*a)


def log_file(testbed: str):
    return RUN_DIR / f"moves-{testbed}.jsonl"


class Controller:
    def __init__(self, testbed: str, ctrl_delay_ms: float = 0.0):
        self.testbed = testbed
        self.rec = state.load(testbed)
        self.delay_ms = ctrl_delay_ms
        self.steer = Steering(testbed)
        self.move_lock = threading.Lock()     # one move at a time
        self.moves = 0
        self.started = time.time()
        self.last: dict | None = None

    def status(self) -> dict:
        return {"testbed": self.testbed, "uptime_s": round(time.time() - self.started, 1), "moves": self.moves,
                "ctrl_delay_ms": self.delay_ms, "busy": self.move_lock.locked(),
                "instances": [n for n, i in self.rec["nodes"].items() if i["role"] == "nf"],
                "last_move": self.last}

    def move(self, req: dict) -> dict:
        src, dst = req.get("src"), req.get("dst")
        nfs = [n for n, i in self.rec["nodes"].items() if i["role"] == "nf"]
        for what, n in (("source", src), ("destination", dst)):
            if n not in nfs:
                raise BadInput(f"unknown {what} instance {n!r}: instances are {', '.join(nfs)}")
        flt = parse(req.get("filter"))
        scopes = parse_scopes(req.get("scopes"))
        opts = M.parse_opts(req.get("opts"))
        guarantee, mechanism = req.get("guarantee", "lf"), req.get("mechanism", "dist")
        delay = float(req.get("ctrl_delay_ms", self.delay_ms))
        if not self.move_lock.acquire(timeout=float(req.get("wait", 0))):
            raise BadInput("another move is in progress (one at a time)")
        try:
            a = Remote(self.rec, src, delay)
            b = Remote(self.rec, dst, delay)
            try:
                m = M.move(a, b, DelayedSteering(self.steer, delay / 1000), flt, scopes, guarantee, opts,
                           mechanism, timeout=float(req.get("timeout", 30)))
            finally:
                a.close()
                b.close()
            m.update(testbed=self.testbed, ctrl_delay_ms=delay, at=time.time())
            self.moves += 1
            self.last = m
            with open(log_file(self.testbed), "a") as f:
                f.write(json.dumps(m) + "\n")
            return m
        finally:
            self.move_lock.release()


class _Handler(BaseHTTPRequestHandler):
    ctl: Controller = None

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)

    def _reply(self, code: int, obj: dict) -> None:
        body = json.dumps(obj, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/status":
            return self._reply(200, self.ctl.status())
        if self.path.startswith("/moves"):
            path = log_file(self.ctl.testbed)
            lines = path.read_text().splitlines()[-100:] if path.exists() else []
            return self._reply(200, {"moves": [json.loads(l) for l in lines]})
        self._reply(404, {"error": f"no such endpoint {self.path}", "code": 3})

    def do_POST(self):
        if self.path != "/move":
            return self._reply(404, {"error": f"no such endpoint {self.path}", "code": 3})
        try:
            n = int(self.headers.get("Content-Length", 0))
            req = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(req, dict):
                raise BadInput("the request body must be a JSON object")
        except (ValueError, BadInput) as e:
            return self._reply(400, {"error": f"bad request: {e}", "code": 2})
        try:
            self._reply(200, self.ctl.move(req))
        except NfxError as e:
            self._reply(400 if isinstance(e, BadInput) else 500,
                        {"error": str(e), "type": type(e).__name__, "code": e.exit_code, "hint": e.hint})
        except Exception as e:
            log.error("move failed: %s", traceback.format_exc())
            self._reply(500, {"error": f"internal error: {type(e).__name__}: {e}", "code": 1})


def serve(testbed: str, port: int = 0, ctrl_delay_ms: float = 0.0, ready=None) -> None:
    ctl = Controller(testbed, ctrl_delay_ms)
    handler = type("Handler", (_Handler,), {"ctl": ctl})
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    if ready:
        ready(httpd.server_address[1])
    httpd.serve_forever()
