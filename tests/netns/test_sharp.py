"""SHarP handovers (nfx/migrate/sharp.py, nfx/agent/hsl.py) under traffic, judged by the sink:
nothing lost, duplicated or reordered; the destination's state after it is what one instance
that saw all the traffic would hold; the controller buffers only during detection, the
destination the rest. Also: flows born during detection, a detection that times out before a
silent flow speaks again, two overlapping requests of different priority, a destination that
dies half way."""
import os
import signal
import threading
import time

import pytest

from nfx import registry
from nfx.errors import BadInput
from nfx.procs import agents, controller
from nfx.testbed import builder
from nfx.traffic.report import measure
from tests.netns.tbutil import Rigs, running_testbed, under_traffic

RIGS = Rigs()


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=3) as rec:
        try:
            yield rec
        finally:
            RIGS.close()


def per_flow(name, inst) -> dict[int, int]:
    return {m["sport"]: m["pkts_out"] for m in builder.instance(name, inst).mappings() if m["dport"] == 9000}


def handover(name, **body) -> dict:
    return controller.call(name, "POST", "/handover", body, timeout=120)


def handover_under_traffic(name, flows, rate, duration, at, **body):
    gen, sink = RIGS.get(name, flows)

    def call():
        try:
            return handover(name, **body)
        except Exception as e:
            return {"error": str(e)}
    return under_traffic(name, gen, sink, rate, duration, at, call, what="handover",
                         judged=lambda r, m: not (r["lost"] or r["duplicated"] or r["reordered"] or r["unexpected"]
                                                  or "error" in m))


def owner(name, sport: int = 1025) -> str:
    """The instance whose NAT holds the flow from `sport` (the one the flows go to now)."""
    held = [n for n in ("nf0", "nf1", "nf2") if sport in per_flow(name, n)]
    assert len(held) == 1, held
    return held[0]


@pytest.mark.parametrize("flows,rate", [(1, 10000), (1000, 100000)])   # the whole grid: nfx bench sharp --matrix
def test_handover_loses_nothing_and_keeps_order(tb, flows, rate):
    name = tb["name"]
    measure(*RIGS.get(name, flows), 5000, 0.4, 1.0)        # every flow has its state somewhere
    src = owner(name, 1024)
    dst = "nf1" if src != "nf1" else "nf2"
    before = per_flow(name, src)
    duration = 1.5
    m, r = handover_under_traffic(name, flows, rate, duration, 0.6, filter="all", dst=dst, priority=1)
    assert "error" not in m, m
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0), r
    assert m["srcs"] == [src] and m["dst"] == dst and m["flows"] == flows
    after = per_flow(name, dst)
    assert per_flow(name, src) == {}
    sent = dict(zip(range(1024, 1024 + flows), r.get("per_flow") or [int(rate * duration) // flows] * flows))
    assert after == {sp: before[sp] + sent.get(sp, 0) for sp in before}, "per-flow NAT counters differ"
    # the controller held only what detection caught; the destination buffered the rest
    assert 0 < m["controller_buffer_peak"] <= m["controller_packets"]
    assert m["instance_buffer_peak"]["ctrl_buff"] > 0 and m["instance_buffered"] > 0
    for k in ("handover_s", "max_added_delay_us", "messages", "phases_ms", "state_chunks"):
        assert k in m
    assert list(m["phases_ms"]) == ["detecting", "detected", "acked", "redirected", "ctrl_empty", "released", "final"]


def test_flows_born_during_detection_and_a_silent_flow_after_it(tb):
    """Detection lasts 300 ms of silence, the traffic starts 100 ms into it: every flow is born
    during detection and learnt. Then a handover whose detection sees nothing (the traffic
    starts after its maximum silence, while the state is held back 500 ms): the flows go
    straight to the destination, which buffers them until the state is in."""
    name = tb["name"]
    flows, rate = 200, 10000
    measure(*RIGS.get(name, flows), 5000, 0.3, 1.0)
    src = owner(name)
    dst = "nf0" if src != "nf0" else "nf2"
    gen, sink = RIGS.get(name, flows)
    out = {}
    h = threading.Thread(target=lambda: out.setdefault("m", handover(name, filter="all", dst=dst, priority=2,
                                                                     max_silence_ms=300)))
    h.start()
    time.sleep(0.1)
    r = measure(gen, sink, rate, 1.0, 1.0, before_read=lambda: h.join(60))
    m = out["m"]
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), (m, r)
    assert m["flows"] == flows                              # learnt during detection
    src, dst = dst, ("nf1" if dst != "nf1" else "nf2")
    before = per_flow(name, src)
    out = {}
    h = threading.Thread(target=lambda: out.setdefault("m", handover(name, filter="all", dst=dst, priority=2,
                                                                     max_silence_ms=20, state_delay_ms=500)))
    h.start()
    time.sleep(0.15)                                        # detection is over: nothing was seen
    r = measure(gen, sink, rate, 0.5, 1.0, before_read=lambda: h.join(60))
    m = out["m"]
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), (m, r)
    assert m["flows"] == 0 and m["controller_packets"] == 0
    assert m["instance_buffer_peak"]["sw_buff"] > 0       # held at dst until the state came
    assert set(per_flow(name, dst)) == set(before)          # the NAT mappings went with the state


def test_overlapping_requests_higher_priority_wins(tb):
    """r=1: all flows to one instance; at once r=5: flow 1024 to another. Whatever finishes
    first, flow 1024 ends at r=5's destination and the rest at r=1's; nothing is lost."""
    name = tb["name"]
    flows = 100
    gen, sink = RIGS.get(name, flows)
    # from a known start: every flow at nf0 (the earlier tests leave them wherever their last
    # handover did, and flow 1024 with them or not, by which instances they drew)
    try:
        handover(name, filter="all", dst="nf0", priority=1)
    except BadInput as e:
        assert "already" in str(e), e
    measure(gen, sink, 5000, 0.3, 1.0)
    assert owner(name) == owner(name, 1024) == "nf0"
    low, high = "nf1", "nf2"
    res = {}
    hs = [threading.Thread(target=lambda: res.setdefault("low", handover(name, filter="all", dst=low, priority=1))),
          threading.Thread(target=lambda: res.setdefault("high", handover(name, filter="proto=udp sport=1024",
                                                                           dst=high, priority=5)))]
    t = threading.Thread(target=lambda: res.setdefault("r", measure(gen, sink, 10000, 1.5, 1.0,
                                                                   before_read=lambda: [h.join(60) for h in hs])))
    t.start()
    time.sleep(0.3)
    for h in hs:
        h.start()
        time.sleep(0.01)
    t.join()
    r = res["r"]
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), res
    measure(gen, sink, 5000, 0.3, 1.0)
    assert 1024 in per_flow(name, high) and 1024 not in per_flow(name, low), res
    assert set(range(1025, 1024 + flows)) <= set(per_flow(name, low)), res
    st = controller.call(name, "GET", "/status")["handovers"]
    assert st["running"] == [] and st["waiting"] == [] and st["overriding"] == []


def test_a_destination_that_dies_rolls_back(tb):
    """The destination's agent is killed while the source holds its state back (500 ms): the
    handover rolls back, the flows stay with the source and its state, and what the source
    still had is not lost (the packets sent to the dead destination are)."""
    name = tb["name"]
    flows = 100
    gen, sink = RIGS.get(name, flows)
    measure(gen, sink, 5000, 0.3, 1.0)
    src = owner(name)
    dst = next(n for n in ("nf0", "nf1", "nf2") if n != src)
    before = per_flow(name, src)
    out = {}
    h = threading.Thread(target=lambda: out.setdefault("e", _error(lambda: handover(
        name, filter="all", dst=dst, priority=1, state_delay_ms=500, timeout=5))))
    h.start()
    time.sleep(0.3)
    os.kill(agents.pid_of(registry.load(name), dst), signal.SIGKILL)
    h.join(30)
    agents.start(registry.load(name), [dst])
    assert "rolled back" in out["e"], out
    assert set(per_flow(name, src)) == set(before)          # the source kept its state
    r = measure(gen, sink, 5000, 0.4, 1.0)                  # and the flows, through it again
    assert (r["lost"], r["duplicated"]) == (0, 0), r
    assert per_flow(name, dst) == {}


def _error(fn) -> str:
    try:
        fn()
    except Exception as e:
        return str(e)
    return ""


def test_one_flow_of_a_nat_with_its_return_traffic(tb):
    """A one-flow filter on a NAT, with the sink echoing every packet back: the return traffic
    is matched by the flow's public tuple (from the source), handed over with it, and nothing is
    lost, duplicated or reordered either way."""
    from nfx.traffic.rig import rig
    name = tb["name"]
    RIGS.drop(name)                                         # the echo rig takes the hosts' programs
    with rig(name, 20, echo=True) as (gen, sink, echo):
        measure(gen, sink, 5000, 0.3, 1.0, echo=echo)
        src = owner(name, 1030)
        dst = next(n for n in ("nf0", "nf1", "nf2") if n != src)
        m, r = under_traffic(name, gen, sink, 10000, 1.5, 0.6, lambda: handover(
            name, filter="proto=udp sport=1030", dst=dst, priority=3), what="handover", echo=echo)
        assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), (m, r)
        e = r["echo"]
        assert (e["lost"], e["duplicated"], e["reordered"]) == (0, 0, 0), (m, e)
        assert m["flows"] == 2                              # one each way: inside tuple, public tuple
        assert 1030 in per_flow(name, dst) and 1030 not in per_flow(name, src)
        measure(gen, sink, 5000, 0.3, 1.0, echo=echo)       # afterwards too, through the final rules
        assert per_flow(name, dst)[1030] > 0
