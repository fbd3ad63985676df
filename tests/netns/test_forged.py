"""Nothing on the wire or on the host steers nfx (nfx issue 9): the controller's API refuses
requests without the testbed's token, bounds bodies and drops stalled clients; IBCs and triggers
forged by a host (h1, in front of the inside switch) change nothing, in and out of a move."""
import http.client
import json
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from nfx import layout as L
from nfx.procs import controller
from nfx.control.controller import BODY_MAX, READ_TIMEOUT_S
from nfx.frames import ibc_frame, trigger_frame
from nfx.control.switch import Match, Rule, Switch
from nfx.errors import Refused
from nfx.flows import make_key
from nfx.loader import netns
from nfx.gate import Gate
from nfx import registry
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import running_testbed

FLOWS, RATE, DURATION, AT = 200, 20000, 2.0, 0.8
KEY = make_key("10.0.1.2", "10.0.2.2", 1024, 9000, 17)      # the rig's first flow


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2) as rec:
        with rig(rec["name"], FLOWS) as (gen, sink):
            measure(gen, sink, 10000, 0.5, 1.0)
        yield rec


def switch(rec, node="si") -> Switch:
    info = registry.load(rec["name"])["nodes"][node]
    return Switch.open(node, info["ns"], Path(info["pin"]))


def host_sock(rec, host="h1") -> tuple[socket.socket, bytes]:
    info = rec["nodes"][host]
    with netns.enter(info["ns"]):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((info["ifname"], 0))
    return s, s.getsockname()[4]


def ibc_epoch(rec, node="si") -> int:
    s = switch(rec, node)
    try:
        return s.maps["sw_cfg"].get(L.u32(0)).ibc_epoch
    finally:
        s.close()


# ---- the northbound API --------------------------------------------------------------------------
def api(rec, method, path, body=b"", headers=None, timeout=10):
    port = registry.load(rec["name"])["controller"]["port"]
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        c.close()


def test_move_without_the_token_is_refused_and_changes_nothing(tb):
    name = tb["name"]
    before = controller.call(name, "GET", "/status")
    marks = [builder.instance(name, i).maps["nfx_marks"].export()[0] for i in ("nf0", "nf1")]
    body = json.dumps({"src": "nf0", "dst": "nf1", "guarantee": "lf"}).encode()
    code, obj = api(tb, "POST", "/move", body, {"Content-Type": "application/json"})
    assert code == 401 and obj["type"] == "Refused" and "no token" in obj["error"]
    code, obj = api(tb, "POST", "/move", body, {"Authorization": "Bearer " + "0" * 32})
    assert code == 403 and "wrong token" in obj["error"]
    code, _ = api(tb, "POST", "/move", body, {"Authorization": "Basic " + tb["token"]})
    assert code == 403
    for path in ("/status", "/moves"):
        assert api(tb, "GET", path)[0] == 401
    after = controller.call(name, "GET", "/status")
    assert after["moves"] == before["moves"] and after["last_move"] == before["last_move"] and not after["busy"]
    assert [builder.instance(name, i).maps["nfx_marks"].export()[0] for i in ("nf0", "nf1")] == marks


def test_wrong_token_through_the_client_raises_refused(tb, monkeypatch):
    real = registry.load

    def load(n):
        r = real(n)
        r["token"] = "f" * 32
        return r
    monkeypatch.setattr(registry, "load", load)
    with pytest.raises(Refused, match="wrong token") as e:
        controller.call(tb["name"], "GET", "/status")
    assert e.value.exit_code == 9


def test_body_over_the_limit_is_refused_unread(tb):
    auth = {"Authorization": "Bearer " + tb["token"]}
    port = registry.load(tb["name"])["controller"]["port"]
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(f"POST /move HTTP/1.0\r\nAuthorization: {auth['Authorization']}\r\n"
                  f"Content-Length: {BODY_MAX + 1}\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):         # headers and body may come in separate segments
            reply += chunk
        reply = reply.decode()
        assert reply.startswith("HTTP/1.0 413") and "limit" in reply
    finally:
        s.close()
    assert api(tb, "POST", "/move", b"x", {**auth, "Content-Length": "-5"})[0] == 400


def test_a_stalled_client_is_dropped(tb):
    port = registry.load(tb["name"])["controller"]["port"]
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S + 10)
    try:
        s.sendall(f"POST /move HTTP/1.0\r\nAuthorization: Bearer {tb['token']}\r\nContent-Length: 100\r\n\r\n"
                  '{"src": '.encode())
        got = s.recv(65536)           # the server ends the connection, with or without a word
        assert time.monotonic() - t0 < READ_TIMEOUT_S + 5
        assert not got or not got.startswith(b"HTTP/1.0 200")
    finally:
        s.close()
    assert controller.call(tb["name"], "GET", "/status")["moves"] >= 0      # and still serves


def test_a_slow_drip_is_dropped_at_the_deadline(tb):
    from nfx.control.controller import REQUEST_DEADLINE_S
    port = registry.load(tb["name"])["controller"]["port"]
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    closed = False
    try:
        s.sendall(b"GET /status HTTP/1.0\r\n")
        while time.monotonic() - t0 < REQUEST_DEADLINE_S + 5:
            try:
                s.sendall(b"X-a: b\r\n")       # one header line a second, never the end
                s.settimeout(1.0)
                if s.recv(65536) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
    finally:
        s.close()
    assert closed and time.monotonic() - t0 < REQUEST_DEADLINE_S + 3


# ---- forged IBCs and triggers from h1 ------------------------------------------------------------
def nf_view(name, inst):
    nf = builder.instance(name, inst)
    st = Gate(nf).move_state()
    return nf.stats(), list(st.ibc_switch) + list(st.ibc_peer)


def test_forged_ibc_outside_a_move_changes_nothing(tb):
    name = tb["name"]
    E = 777001
    si = switch(tb)
    si.expect_ibc(E)          # what a move leaves behind: the last IBC's epoch stays set
    rings = {i: Gate(builder.instance(name, i)).ring() for i in ("nf0", "nf1")}
    for r in rings.values():
        r.poll(0)
    sw0 = si.stats()
    nf0 = {i: nf_view(name, i) for i in ("nf0", "nf1")}
    s, mac = host_sock(tb)
    epochs = [0, 1, E - 1, E + 1, random.randrange(1, 1 << 32)]
    try:
        for _ in range(20):
            for e in epochs + [E]:
                s.send(ibc_frame(KEY, mac, e))
    finally:
        s.close()
    time.sleep(0.2)
    sw1 = si.stats()
    si.close()
    # the switch dropped the ones of another epoch at the host port
    assert sw1.get("r_forged", 0) - sw0.get("r_forged", 0) == 20 * len(epochs)
    # the one of the epoch the switch expects reached nf0, whose gate dropped it: no move runs
    stats, cut = nf_view(name, "nf0")
    assert stats.get("r_forged", 0) - nf0["nf0"][0].get("r_forged", 0) == 20
    assert stats.get("r_ibc", 0) - nf0["nf0"][0].get("r_ibc", 0) == 20
    assert cut == [0, 0, 0, 0]
    assert nf_view(name, "nf1")[1] == [0, 0, 0, 0]
    for r in rings.values():
        assert [p for p in r.poll(0) if p.kind == L.BufKind.IBC] == []


class Forger:
    """Forged IBCs of the flow from h1, as fast as one thread sends them, with epochs a host
    could know or guess: none, random, the last one the switch saw and the next few."""

    def __init__(self, rec):
        self.rec, self.sent, self._stop = rec, 0, threading.Event()
        self.last = ibc_epoch(rec)
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        s, mac = host_sock(self.rec)
        try:
            while not self._stop.is_set():
                for e in (0, random.randrange(1, 1 << 32), self.last, self.last + 1, self.last + 2):
                    s.send(ibc_frame(KEY, mac, e))
                    self.sent += 1
                time.sleep(0.0005)
        finally:
            s.close()

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self.t.join()


@pytest.mark.parametrize("mechanism", ["dist", "opennf"])
def test_forged_ibcs_during_an_op_move_change_nothing(tb, mechanism):
    name = tb["name"]
    for src, dst in (("nf0", "nf1"), ("nf1", "nf0")):
        si = switch(tb)
        sw0 = si.stats().get("r_forged", 0)
        out, moved = {}, threading.Event()
        with rig(name, FLOWS) as (gen, sink), Forger(tb) as f:
            t = threading.Thread(target=lambda: out.setdefault("r", measure(gen, sink, RATE, DURATION, 1.0,
                                                                            before_read=lambda: moved.wait(60))))
            t.start()
            time.sleep(AT)
            try:
                m = controller.call(name, "POST", "/move", {"src": src, "dst": dst, "guarantee": "op",
                                                            "mechanism": mechanism})
            finally:
                moved.set()
                t.join()
        r = out["r"]
        forged = si.stats().get("r_forged", 0) - sw0
        si.close()
        assert f.sent > 1000 and forged > 0.5 * f.sent, (f.sent, forged)
        assert r["sent"] == RATE * DURATION
        assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), (m, r)
        # the move's own IBC got through: the switch had its epoch
        assert ibc_epoch(tb) == m["epoch"]
        for inst in (src, dst):
            assert nf_view(name, inst)[1] == [0, 0, 0, 0]      # cleared once the move ended


def test_forged_trigger_from_h1_fires_nothing(tb):
    name = tb["name"]
    T = random.randrange(1, 1 << 63)
    si = switch(tb)
    armed = si.add_wild(Match(in_port="h1"), Rule(output=["nf1"], token=T), prio=5)
    try:
        before = si.stats()
        s, mac = host_sock(tb)
        try:
            for i in range(50):
                s.send(trigger_frame(T, mac))
                s.send(trigger_frame(T + 1 + i, mac))
        finally:
            s.close()
        time.sleep(0.2)
        assert si.fired(T) is None and len(si.maps["sw_fired"]) == 0
        assert si.stats().get("r_forged", 0) - before.get("r_forged", 0) == 100
        with rig(name, 10) as (gen, sink):
            measure(gen, sink, 5000, 0.2, 0.5)
        assert si.counters()[armed][0] == 0          # the armed rule still waits; traffic went to nf0
        # the source's path: a trigger out of nf0 toward the switch fires it
        info = tb["nodes"]["nf0"]
        with netns.enter(info["ns"]):
            t = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            t.bind((info["wiring"][0], 0))
        try:
            t.send(trigger_frame(T, t.getsockname()[4]))
        finally:
            t.close()
        deadline = time.monotonic() + 2
        while si.fired(T) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert si.fired(T) is not None
    finally:
        si.remove(armed)
        si.forget_token(T)
        si.close()
