"""The inspector's view of the orchestration loop: the decision log a Timeline writes, followed
by DecisionTail from its last lines on, through a restart of the loop; the model keeps the
latest and the screen shows them."""
import json
import queue
import threading
import time
from types import SimpleNamespace

import pytest

from nfx import paths
from nfx.inspect import decisions as D
from nfx.inspect.flows import FlowMatch
from nfx.inspect.model import Model
from nfx.inspect.view import screen
from nfx.orchestrate import timeline as T
from nfx.orchestrate.plan import Action


@pytest.fixture
def log(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUN_DIR", tmp_path)
    return paths.decision_log("tb")


def drain(q, n, timeout=3.0):
    got, end = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        try:
            got.append(q.get(timeout=0.05))
        except queue.Empty:
            pass
    return got


def test_the_timeline_logs_decisions_and_the_tail_follows_them_across_a_restart(log):
    tl = T.Timeline(100.0, 0.1, log_path=log)
    tl.event(SimpleNamespace(kind="overload", instance="nf0", active=True, value=120.0))
    q, stop = queue.Queue(), threading.Event()
    tail = D.DecisionTail("tb", q, stop, poll_s=0.01)
    tail.start()
    try:
        first = drain(q, 1)
        assert [(e["what"], e["condition"], e["instance"]) for e in first] == [("event", "overload", "nf0")]
        assert first[0]["stream"] == "decisions"
        views = {"nf0": SimpleNamespace(pps=120.0, flows=10)}
        tl.plan(views, [Action("move", "nf0 over", "nf0", "nf1", "src=10.0.1.0/28", flows=5, pps=60.0)], 0.01)
        tl.action({"kind": "move", "instance": "nf0", "dst": "nf1", "ok": True, "start": 0.1, "end": 0.2})
        got = drain(q, 2)
        assert [e["what"] for e in got] == ["plan", "action"]
        assert got[0]["actions"][0]["reason"] == "nf0 over" and got[1]["ok"] is True
        # a new run starts the log over: followed from its start
        tl2 = T.Timeline(100.0, 0.1, log_path=log)
        tl2.note("lost", instance="nf1", error="gone")
        got = drain(q, 1)
        assert [(e["what"], e["kind"]) for e in got] == [("note", "lost")]
    finally:
        stop.set()
        tail.join(2)
    assert not tail.is_alive()


def test_the_model_keeps_the_loops_decisions_and_the_screen_shows_them():
    m = Model("tb", ["nf0"], FlowMatch(), None)
    assert m.apply({"instance": D.LOOP, "stream": "decisions", "what": "plan", "t": 1.0, "ts": time.time(),
                    "actions": [{"kind": "add", "instance": "nf2", "reason": "400k pps wants 3"}]})
    assert m.apply({"instance": D.LOOP, "stream": "decisions", "what": "action", "t": 1.5, "ts": time.time(),
                    "kind": "add", "instance": "nf2", "ok": True, "seconds": 0.6})
    text = json.dumps([str(x) for x in m.loop])
    assert "nf2" in text
    from rich.console import Console
    c = Console(width=140, record=True)
    c.print(screen(m, ["stats", "decisions"], 60, 5))
    shown = c.export_text()
    assert "orchestration loop" in shown and "add nf2" in shown and "400k pps wants 3" in shown
