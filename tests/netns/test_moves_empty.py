"""Order-preserving moves with nothing to cut: no flows at all, a filter that matches none, and
flows born only once the move has begun. Each completes as a move of what there is (nothing,
or the newborn flows), its cut made by an IBC whose tuple comes from the filter (wildcards
filled: mechanisms.ibc_synthetic), and the sink sees nothing lost, duplicated or reordered."""
import threading
import time

import pytest

from nfx.agent.client import AgentClient
from nfx.procs import controller
from nfx.gate import Gate
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import running_testbed

FLOWS, RATE = 1000, 50000


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2) as rec:
        yield rec


def clear(name):
    for i in ("nf0", "nf1"):
        with AgentClient(name, i, timeout=60) as c:
            c.delete()


def held(name, inst) -> int:
    return len(builder.instance(name, inst).maps["nat_fwd"])


def move(name, src, dst, **kw):
    return controller.call(name, "POST", "/move", {"src": src, "dst": dst, "guarantee": "op", **kw})


CASES = [(m, o) for m in ("dist", "opennf") for o in ("", "pz,ll,er")] + [("dist", "ov")]


@pytest.mark.parametrize("mechanism,opts", CASES, ids=[f"{m}{'-' + o if o else ''}" for m, o in CASES])
def test_op_move_of_nothing(tb, mechanism, opts):
    """No flow anywhere: the move is done, with no flows, there and back."""
    name = tb["name"]
    clear(name)
    for src, dst in (("nf0", "nf1"), ("nf1", "nf0")):
        m = move(name, src, dst, mechanism=mechanism, opts=opts)
        assert m["flows"] == 0 and "cut" in m["phases_ms"], m
        assert held(name, src) == held(name, dst) == 0


@pytest.mark.parametrize("mechanism", ["dist", "opennf"])
def test_op_filter_matching_nothing_under_traffic(tb, mechanism):
    """1000 live flows, a filter that matches none of them (their source port is never 7):
    the move moves nothing, and the live flows are not disturbed."""
    name = tb["name"]
    clear(name)
    out = {}
    with rig(name, FLOWS) as (gen, sink):
        measure(gen, sink, 20000, 0.5, 1.0)            # every flow gets its state on nf0
        home = "nf0" if held(name, "nf0") == FLOWS else "nf1"
        other = "nf1" if home == "nf0" else "nf0"
        moved = threading.Event()
        t = threading.Thread(target=lambda: out.setdefault("r", measure(gen, sink, RATE, 1.5, 1.0,
                                                                        before_read=lambda: moved.wait(60))))
        t.start()
        time.sleep(0.5)
        try:
            m = move(name, home, other, mechanism=mechanism, filter="proto=udp sport=7")
        finally:
            moved.set()
            t.join()
    r = out["r"]
    assert m["flows"] == 0, m
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), r
    assert held(name, home) == FLOWS and held(name, other) == 0


@pytest.mark.parametrize("mechanism,opts", [("dist", ""), ("dist", "pz,ll,er"), ("opennf", "")])
def test_op_flows_born_during_the_move(tb, mechanism, opts):
    """No flow when the source reads what to cut; 1000 are born while the move runs: the traffic
    starts once dst has been told of the move (the source read its flows just before; its
    connection to dst takes 40 ms each way, so the flows are born around the source's hold).
    The made-up cut keeps every one of them in order, and they all end up at dst."""
    name = tb["name"]
    clear(name)
    src, dst = "nf0", "nf1"
    move(name, dst, src, guarantee="ng")           # the switches send everything to src
    out = {}
    with rig(name, FLOWS) as (gen, sink):
        def traffic():
            nf = builder.instance(name, dst)
            t0 = time.monotonic()
            while not Gate(nf).move_cfg().epoch and time.monotonic() - t0 < 10:
                time.sleep(0.001)
            out["r"] = measure(gen, sink, RATE, 1.5, 1.0)
        t = threading.Thread(target=traffic)
        t.start()
        try:
            m = move(name, src, dst, mechanism=mechanism, opts=opts, ctrl_delay_ms=10, data_delay_ms=40)
        finally:
            t.join()
    r = out["r"]
    if mechanism == "dist":
        # the source found no flow to take the cut from; what moved are the flows born since
        assert m["ibc_made_up"] and 0 <= m["flows"] <= 2 * FLOWS, m
    assert m["packets_redirected"] + m["instance_buffered"] > 0, m    # the flows lived during the move
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), (m, r)
    assert held(name, dst) == FLOWS and held(name, src) == 0, (held(name, src), held(name, dst))
