"""AgentClient's public calls for a move (what nfx.migrate.endpoint uses), against a scripted
agent on a loopback socket: the requests go out as the agent reads them today (bytes as base64,
None left out, keys in order), a client made for a node reads no registry, DiST's stream takes
held / go / done, and a stream left before its end closes the connection."""
import base64
import json
import socket
import threading

import pytest

from nfx.agent import client as C
from nfx.errors import BadInput
from nfx.state import wire

NODE = {"testbed": "tb", "name": "nf0", "agent_addr": "127.0.0.1", "agent_port": 0, "index": 0, "peer_slots": {}}


class Agent:
    """Reads requests and answers with the frames it is given, one list per request."""

    def __init__(self, script):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.port = self.ls.getsockname()[1]
        self.script, self.got, self.closed = script, [], threading.Event()
        self.ls.settimeout(5)
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        s, _ = self.ls.accept()
        r = wire.Reader(s)
        for answer in self.script:
            fr = r.frame()
            if fr is None:
                break
            self.got.append(fr[1])
            for kind, obj in answer:
                wire.write(s, wire.encode_json(obj, kind))
        try:
            if r.frame() is None:            # the client closed the connection
                self.closed.set()
        except OSError:
            pass
        s.close()


def client(agent, monkeypatch):
    monkeypatch.setattr(C.registry, "load", lambda name: pytest.fail("for_node read the registry"))
    return C.AgentClient.for_node({**NODE, "agent_port": agent.port}, "tok", None, timeout=5)


def test_a_request_goes_out_as_before(monkeypatch):
    a = Agent([[(wire.JSON, {"ok": True})]])
    c = client(a, monkeypatch)
    c.request("move_begin", role="dst", epoch=3, order=False, keys=b"\x01\x02", filter=None, peer=0)
    assert list(a.got[0]) == ["op", "token", "role", "epoch", "order", "keys", "peer"]
    assert a.got[0]["keys"] == base64.b64encode(b"\x01\x02").decode() and a.got[0]["token"] == "tok"
    c.close()


def test_dist_stream_held_go_done(monkeypatch):
    held = {"ok": True, "op": "move_dist", "flows": 2, "ibc": [], "outside": None}
    a = Agent([[(wire.JSON, held)], [(wire.END, {"chunks": 1, "bytes": 9})]])
    c = client(a, monkeypatch)
    s = c.move_dist("nf1", 7, "lf", {"pz", "er"}, "all", ("per-flow",), 30.0, fire=0xab, data_delay_ms=1.0)
    assert s.held() == held
    s.go()                                   # the agent reads it as its next frame
    assert s.done() == {"chunks": 1, "bytes": 9}
    s.close()
    req = a.got[0]
    assert json.dumps(req) == json.dumps({"op": "move_dist", "token": "tok", "dst": "nf1", "epoch": 7,
                                          "guarantee": "lf", "opts": ["er", "pz"], "filter": "all",
                                          "scopes": ["per-flow"], "timeout": 30.0, "data_delay_ms": 1.0,
                                          "fire": "ab"})
    assert a.got[1] == {"go": True} and c._sock is not None      # done: the connection stays
    c.close()


def test_a_stream_left_before_done_closes_the_connection(monkeypatch):
    a = Agent([[(wire.JSON, {"ok": True, "flows": 0})]])
    c = client(a, monkeypatch)
    s = c.move_dist("nf1", 7, "lf", set(), "all", ("per-flow",), 30.0)
    s.held()
    s.close()
    assert c._sock is None and a.closed.wait(5)


def test_an_error_ends_the_stream_in_step(monkeypatch):
    a = Agent([[(wire.ERROR, {"error": "no peer link", "type": "BadInput", "code": 2})]])
    c = client(a, monkeypatch)
    s = c.move_dist("nf1", 7, "lf", set(), "all", ("per-flow",), 30.0)
    with pytest.raises(BadInput, match="nf0: no peer link"):
        s.held()
    s.close()
    assert c._sock is not None              # the agent answered the request: nothing is pending
    c.close()


def test_move_get_and_move_ctrl(monkeypatch):
    a = Agent([[(wire.JSON, {"ok": True, "op": "move_get"}), (wire.END, {"chunks": 0, "export_s": 0.5})],
               [(wire.JSON, {"ok": True}), (wire.JSON, {"packets": base64.b64encode(b"pk").decode()}),
                (wire.END, {})]])
    c = client(a, monkeypatch)
    head = {}
    assert list(c.move_get(["per-flow"], "all", ll=True, peer=2, head=head)) == []
    assert head["end"]["export_s"] == 0.5
    assert a.got[0] == {"op": "move_get", "token": "tok", "scopes": ["per-flow"], "filter": "all", "ll": True,
                        "peer": 2}
    assert list(c.move_ctrl()) == [b"pk"]
    c.close()
