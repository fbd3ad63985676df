"""The controller: one process per testbed. Northbound, an HTTP/JSON API on 127.0.0.1 (what the
`nfx move` and `nfx controller` commands call; documented in nfx/control/API.md): every request
carries the testbed's token (`Authorization: Bearer`), bodies are bounded and reads time out,
so a local process without the token changes nothing and cannot hold the server. Southbound,
it programs the switches (their pinned maps) and talks to the agents on the management network.
It holds OpenNF's packet buffer and reports its peak. `ctrl_delay_ms` emulates a one-way delay
on every control message (agents and switches); the data plane gets none (the kernel has no
netem, so the delay lives in the control-channel transport)."""
import copy
import hmac
import json
import logging
import socket
import queue
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import migrate
from ..errors import BadInput, NfxError, Refused
from ..migrate.endpoint import Remote
from ..movespec import MoveRequest, parse_data_link, parse_opts
from ..filter import parse
from ..state.tables import parse_scopes
from .. import registry
from ..agent import link
from ..procs.controller import moves_path
from . import failback
from .failover import Failover, parse_body as failover_body
from .handover import Handovers
from .steer import Steering
from . import steer_slots

log = logging.getLogger("nfx.controller")


class DelayedSteering:
    """The switches behind a control link (nfx/agent/link.py): rule changes and packet-outs reach
    the switch side one delay after they are sent and are carried out there in the order sent;
    a rule change is acknowledged (one more delay), a packet-out is not. `applied_at` is when
    the last rule change took effect (perf_counter)."""

    def __init__(self, steer: Steering, delay_ms: float, rate_mbit: float = 0.0):
        self.s = steer
        self.up, self.down = link.pair(("switches", steer.rec["name"]), delay_ms, rate_mbit)
        self.applied_at = 0.0
        self.q: queue.Queue | None = None
        if self.up.active:
            self.q = queue.Queue()
            threading.Thread(target=self._switch_side, daemon=True, name="switch-side").start()

    def _switch_side(self) -> None:
        while (item := self.q.get()) is not None:
            due, fn, args, done = item
            link.sleep_until(due)
            self._run(fn, args, done)

    def _send(self, fn, *args) -> dict:
        done = {"ev": threading.Event()}
        if self.q is None:
            self._run(fn, args, done)
        else:
            self.q.put((self.up.due(RULE_BYTES), fn, args, done))
        return done

    @staticmethod
    def _run(fn, args, done) -> None:
        try:
            done["result"] = fn(*args)
        except BaseException as e:
            done["error"] = e
            log.warning("switch side: %s failed: %s", fn.__name__, e)
        done["at"] = time.perf_counter()
        done["ev"].set()

    def _change(self, fn, *args) -> dict:
        """A rule change, carried out at the switch side and acknowledged."""
        done = self._send(fn, *args)
        done["ev"].wait()
        if "error" in done:
            raise done["error"]
        if self.q is not None:
            self.down.pass_(RULE_BYTES)
        return done

    def point(self, *a, tagged: bool = False, keys: list | None = None):
        done = self._change(lambda *b: self.s.point(*b, tagged=tagged, keys=keys, prune=True), *a)
        self.applied_at = done["at"]
        return done["result"]

    def arm(self, flt, nfs, token: int) -> float:
        """Rules for `nfs` that take force when a trigger with `token` reaches each switch
        (Steering.point); returns when they were in place (perf_counter)."""
        return self._change(self.s.point, flt, nfs, None, token)["at"]

    def fired(self, token: int) -> list[float | None]:
        """When each switch took the trigger (perf_counter seconds; the same clock). Read for
        the metrics, not through the control link."""
        return [None if ns is None else ns / 1e9 for ns in self.s.fired(token)]

    def settle(self, flt, nfs, token: int) -> None:
        """After a trigger: the armed rules rewritten as plain ones (the old go with them) and the
        token forgotten. The flows already take this path, so applied_at stays."""
        def make_plain():
            self.s.point(flt, nfs)
            self.s.forget_token(token)
        self._change(make_plain)

    def forget_token(self, token: int) -> None:
        self._change(self.s.forget_token, token)

    def check_room(self, flt, armed: bool = False) -> dict:
        """Refuse a move of `flt` the switches lack wildcard slots for (steer_slots), before it
        holds or sends anything. Read here, as the controller's own view of its switches."""
        return steer_slots.check_room(self.s, flt, armed)

    def ibcs(self, cuts: list, epoch: int) -> None:
        """Steering.ibcs: the IBCs sent together; over an emulated control link, one packet-out
        after another."""
        for part in [cuts] if self.q is None else [[c] for c in cuts]:
            done = self._send(self.s.ibcs, part, epoch)
            if self.q is None and "error" in done:
                raise done["error"]

    def close(self) -> None:
        if self.q is not None:
            self.q.put(None)


RULE_BYTES = 128       # an OpenFlow flow-mod or packet-out, about
# the mechanisms that move between joined testbeds: nothing of theirs needs the peer link between
# one testbed's instances (dist's redirects) or the controller's packet-outs at the destination
CROSS_SITE = ("slim", "dup")


def _float(body: dict, key: str, default: float = 0.0) -> float:
    try:
        return float(body.get(key, default))
    except (TypeError, ValueError):
        raise BadInput(f"{key} must be a number, not {body.get(key)!r}") from None


def in_service(rec) -> list[str]:
    """A record's NF instances, less those being added or removed (nfx nf add|remove mark them
    "changing" until they are done)."""
    return [n for n, i in rec["nodes"].items() if i["role"] == "nf" and not i.get("changing")]


def log_file(testbed: str):
    return moves_path(testbed)


class Controller:
    def __init__(self, testbed: str, ctrl_delay_ms: float = 0.0, ctrl_rate_mbit: float = 0.0):
        self.testbed = testbed
        self.rec = registry.load(testbed)
        self.delay_ms, self.rate_mbit = ctrl_delay_ms, ctrl_rate_mbit
        self.steer = Steering(testbed)
        self.move_lock = threading.Lock()     # one move at a time
        self.handovers = Handovers(self)      # SHarP's: several at once (nfx/control/handover.py)
        self.moves = 0
        self.started = time.time()
        self.last: dict | None = None
        self.fdu: Failover | None = None      # issue 14: POST /failover {on}
        self.fdu_lock = threading.Lock()

    def failover(self, body: dict) -> dict:
        """The failure detection unit on (POST /failover {on: true, pairs, ...}: nfx cluster up
        --pairs) or off ({on: false}); its state and what it did (on: false answers the last)."""
        on = body.get("on")
        if not isinstance(on, bool):
            raise BadInput("POST /failover needs on: true or false")
        with self.fdu_lock:
            if not on:
                fdu, self.fdu = self.fdu, None
                return {"on": False, **(fdu.stop() if fdu else {})}
            if self.fdu is not None:
                raise BadInput("failover is on already (POST /failover {on: false} first)")
            fdu = Failover(self, **failover_body(body))
            try:
                out = fdu.start()
            except BaseException:
                fdu.stop()
                raise
            self.fdu = fdu
            return {"on": True, **out}

    def _fdu(self) -> Failover:
        if self.fdu is None:
            raise BadInput("failover is off on this testbed", hint="nfx cluster up --pairs ...")
        return self.fdu

    def rejoin(self, body: dict) -> dict:
        """POST /rejoin {instance}: a failed instance back (nfx cluster rejoin), still fenced."""
        inst = body.get("instance")
        if not isinstance(inst, str):
            raise BadInput("POST /rejoin needs instance")
        return failback.rejoin(self._fdu(), inst)

    def failback(self, body: dict) -> dict:
        """POST /failback {slot, to}: sync-gated (nfx cluster failback)."""
        slot, to = body.get("slot"), body.get("to")
        if not isinstance(slot, str) or not isinstance(to, str):
            raise BadInput("POST /failback needs slot and to")
        return failback.failback(self._fdu(), slot, to, body.get("mechanism", "dist"))

    def instances(self) -> list[str]:
        """The instances a move may name: the record's, less one being added or removed."""
        return in_service(self.rec)

    def instances_changed(self, body: dict) -> dict:
        """POST /instances (nfx nf add|remove): re-read the testbed's record, between moves (one
        under way ends first). The views the switches' steering and SHarP read are updated in
        place. Refused while a handover runs through an instance being removed."""
        if not self.move_lock.acquire(timeout=_float(body, "wait", 30.0)):
            raise BadInput("a move is in progress: the instances change between moves")
        try:
            fresh = registry.load(self.testbed)
            leaving = [n for n, i in fresh["nodes"].items() if i.get("changing") == "remove"]
            busy = sorted({n for h in self.handovers.running.values() for n in h["instances"] if n in leaving})
            for view in (self.rec, self.steer.rec):
                view.update(copy.deepcopy(fresh))
            if busy:
                raise BadInput(f"a handover through {', '.join(busy)} is running")
        finally:
            self.move_lock.release()
        return {"instances": self.instances(), "changing": {n: i["changing"] for n, i in fresh["nodes"].items()
                                                            if i.get("changing")}}

    def status(self) -> dict:
        return {"testbed": self.testbed, "uptime_s": round(time.time() - self.started, 1), "moves": self.moves,
                "ctrl_delay_ms": self.delay_ms, "ctrl_rate_mbit": self.rate_mbit, "busy": self.move_lock.locked(),
                "instances": self.instances(), "steers_by_key": bool(self.rec.get("spread")),
                "switches": steer_slots.slots(self.steer),
                "last_move": self.last, "handovers": self.handovers.status(),
                "failover": self.fdu.status() if self.fdu else None}

    def stamp(self, body: dict) -> dict:
        """The stamper on every switch on or off (POST /stamp {on}: nfx cluster up|down). Between
        moves: a move writes the switches' config too (its IBC epoch)."""
        on = body.get("on")
        if not isinstance(on, bool):
            raise BadInput("POST /stamp needs on: true or false")
        if not self.move_lock.acquire(timeout=float(body.get("wait", 30))):
            raise BadInput("a move is in progress: the stamper changes between moves")
        try:
            for sw in self.steer.sw.values():
                sw.set_stamp(on)
        finally:
            self.move_lock.release()
        return {"stamp": on, "switches": sorted(self.steer.sw)}

    def request(self, rec: dict, body: dict) -> MoveRequest:
        """A POST /move body as a move, checked (the filter parsed here, once)."""
        src, dst = body.get("src"), body.get("dst")
        nfs = in_service(rec)
        far = 0
        for what, n in (("source", src), ("destination", dst)):
            if isinstance(n, str) and registry.remote_instance(rec, n):
                far += 1            # a joined testbed's lent instance (nf1@B): checked there
            elif isinstance(n, str) and (rec["nodes"].get(n) or {}).get("changing"):
                doing = rec["nodes"][n]["changing"]
                raise BadInput(f"{what} instance {n} is being {'added' if doing == 'add' else 'removed'} "
                               f"(nfx nf {doing}): no move names it meanwhile")
            elif n not in nfs:
                raise BadInput(f"unknown {what} instance {n!r}: instances are {', '.join(nfs)}"
                               + (f", and {rec['join']['peer']}'s lent one as INSTANCE@{rec['join']['peer']}"
                                  if rec.get("join") else ""))
        mechanism = body.get("mechanism", "dist")
        if far == 2:
            raise BadInput("both instances are the joined testbed's: its own controller moves between them")
        if far and mechanism not in CROSS_SITE:
            raise BadInput(f"a move between testbeds goes by {' or '.join(CROSS_SITE)}, whose state and statelets "
                           f"travel between the agents and whose packets the switches steer over the trunk; "
                           f"{mechanism} is not one")
        flt = parse(body.get("filter"))
        scopes = parse_scopes(body.get("scopes"))
        opts = parse_opts(body.get("opts"))
        return MoveRequest(src, dst, flt, scopes, guarantee=body.get("guarantee", "lf"),
                           mechanism=mechanism, opts=frozenset(opts),
                           timeout=float(body.get("timeout", 30)),
                           data_link=parse_data_link(body),      # the emulated link between instances
                           state_delay_s=_float(body, "state_delay_ms") / 1e3,
                           stall_reader_s=_float(body, "stall_reader_ms") / 1e3)

    def _ctrl_link(self, body: dict) -> tuple[float, float]:
        """This move's emulated control link: (one-way delay ms, rate Mbit/s)."""
        delay = float(body.get("ctrl_delay_ms", self.delay_ms))
        rate = float(body.get("ctrl_rate_mbit", self.rate_mbit))
        if delay < 0 or rate < 0:
            raise BadInput("ctrl_delay_ms and ctrl_rate_mbit must be >= 0 (0: no emulated delay or rate limit)")
        return delay, rate

    def handover(self, body: dict) -> dict:
        """A SHarP handover (POST /handover): filter, priority, dst; the source is found here."""
        if body.get("guarantee") not in (None, "op"):
            raise BadInput("SHarP hands flows over loss-free and order-preserving (op) only")
        out = self.handovers.run(body)
        self.last = out
        return out

    @staticmethod
    def _endpoint(rec, name: str, delay: float, rate: float) -> Remote:
        far = registry.remote_instance(rec, name)
        if far is None:
            return Remote(rec, name, delay, rate)
        return Remote(registry.load(far[0]), far[1], delay, rate, named=name, via_ns=rec["mgmt"]["ns"])

    def move(self, body: dict) -> dict:
        if body.get("mechanism") == "sharp":
            return self.handover(body)
        rec = registry.load(self.testbed)        # once per move: the agents' addresses as they are now
        req = self.request(rec, body)
        delay, rate = self._ctrl_link(body)
        if not self.move_lock.acquire(timeout=float(body.get("wait", 0))):
            raise BadInput("another move is in progress (one at a time)")
        try:
            a = self._endpoint(rec, req.src, delay, rate)
            b = self._endpoint(rec, req.dst, delay, rate)
            if a.testbed != b.testbed:
                b.at = b.address()        # the source's agent sends to it over the routed link
            sw = DelayedSteering(self.steer, delay, rate)
            try:
                m = migrate.move(req, a, b, sw)
            finally:
                a.close()
                b.close()
                sw.close()
            m.testbed, m.ctrl_delay_ms, m.ctrl_rate_mbit, m.at = self.testbed, delay, rate, time.time()
            out = m.to_dict()
            self.moves += 1
            self.last = out
            with open(log_file(self.testbed), "a") as f:
                f.write(json.dumps(out) + "\n")
            return out
        finally:
            self.move_lock.release()


BODY_MAX = 64 << 10       # a move request is a few hundred bytes
READ_TIMEOUT_S = 5.0      # each read of a request; a client that stalls longer is dropped
REQUEST_DEADLINE_S = 5.0   # the whole request (line, headers, body), however it trickles in
MAX_CONNECTIONS = 32      # served at once; more are closed at once


class _Handler(BaseHTTPRequestHandler):
    ctl: Controller = None
    token: bytes = b""
    timeout = READ_TIMEOUT_S          # StreamRequestHandler: the socket's timeout for every read

    def setup(self):
        super().setup()
        # a slow drip of bytes resets the per-read timeout; this bounds the request as a whole
        self._deadline = threading.Timer(REQUEST_DEADLINE_S, self._expire)
        self._deadline.daemon = True
        self._deadline.start()

    def _expire(self):
        log.warning("%s: request not in after %.0f s: closed", self.address_string(), REQUEST_DEADLINE_S)
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self):
        self._deadline.cancel()
        super().finish()

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)

    def _reply(self, code: int, obj: dict, headers: dict | None = None) -> None:
        body = json.dumps(obj, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, code: int, msg: str, type_: str = "BadInput", exit_code: int = 2, hint: str | None = None):
        self.close_connection = True
        self._reply(code, {"error": msg, "type": type_, "code": exit_code, "hint": hint},
                    {"WWW-Authenticate": "Bearer"} if code == 401 else None)

    def _authorized(self) -> bool:
        """The testbed's token, as `Authorization: Bearer <token>`; 401 without, 403 if wrong."""
        h = self.headers.get("Authorization")
        hint = "the token is in the testbed registry, /run/nfx/testbeds/<name>.json (root only)"
        if h is None:
            log.warning("%s: %s %s refused: no token", self.address_string(), self.command, self.path)
            self._refuse(401, "request refused: no token (send Authorization: Bearer <the testbed's token>)",
                         "Refused", Refused.exit_code, hint)
            return False
        scheme, _, tok = h.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(tok.strip().encode(), self.token):
            log.warning("%s: %s %s refused: wrong token", self.address_string(), self.command, self.path)
            self._refuse(403, "request refused: wrong token", "Refused", Refused.exit_code, hint)
            return False
        return True

    def _body(self) -> bytes | None:
        """The request body, at most BODY_MAX bytes; None after refusing it."""
        n = self.headers.get("Content-Length")
        if n is None:
            return b""
        try:
            n = int(n)
            if n < 0:
                raise ValueError(n)
        except ValueError:
            self._refuse(400, f"bad Content-Length {self.headers.get('Content-Length')!r}")
            return None
        if n > BODY_MAX:
            self._refuse(413, f"request body of {n} bytes is over the {BODY_MAX}-byte limit")
            return None
        return self.rfile.read(n)

    def do_GET(self):
        if not self._authorized():
            return
        self._deadline.cancel()
        if self.path == "/status":
            return self._reply(200, self.ctl.status())
        if self.path.startswith("/moves"):
            path = log_file(self.ctl.testbed)
            lines = path.read_text().splitlines()[-100:] if path.exists() else []
            return self._reply(200, {"moves": [json.loads(l) for l in lines]})
        self._reply(404, {"error": f"no such endpoint {self.path}", "code": 3})

    def do_POST(self):
        if not self._authorized():
            return
        if self.path not in ("/move", "/handover", "/stamp", "/failover", "/rejoin", "/failback", "/instances"):
            return self._refuse(404, f"no such endpoint {self.path}", "NotFound", 3)
        raw = self._body()
        if raw is None:
            return
        self._deadline.cancel()              # the request is in; the move may take long
        try:
            req = json.loads(raw or b"{}")
            if not isinstance(req, dict):
                raise BadInput("the request body must be a JSON object")
        except (ValueError, BadInput) as e:
            return self._reply(400, {"error": f"bad request: {e}", "code": 2})
        try:
            act = {"/handover": self.ctl.handover, "/stamp": self.ctl.stamp, "/failover": self.ctl.failover,
                   "/rejoin": self.ctl.rejoin, "/failback": self.ctl.failback,
                   "/instances": self.ctl.instances_changed}.get(self.path, self.ctl.move)
            self._reply(200, act(req))
        except NfxError as e:
            self._reply(400 if isinstance(e, BadInput) else 500,
                        {"error": str(e), "type": type(e).__name__, "code": e.exit_code, "hint": e.hint})
        except Exception as e:
            log.error("move failed: %s", traceback.format_exc())
            self._reply(500, {"error": f"internal error: {type(e).__name__}: {e}", "code": 1})


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once: one more is closed unread."""
    daemon_threads = True

    def __init__(self, *a, **kw):
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*a, **kw)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            log.warning("%s: %d connections open: closed", client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def serve(testbed: str, port: int = 0, ctrl_delay_ms: float = 0.0, ready=None, ctrl_rate_mbit: float = 0.0) -> None:
    ctl = Controller(testbed, ctrl_delay_ms, ctrl_rate_mbit)
    if not ctl.rec.get("token"):
        raise NfxError(f"testbed {testbed} has no token (built by an older nfx)", hint="rebuild it")
    handler = type("Handler", (_Handler,), {"ctl": ctl, "token": ctl.rec["token"].encode()})
    httpd = _Server(("127.0.0.1", port), handler)
    if ready:
        ready(httpd.server_address[1])
    httpd.serve_forever()
