"""Moves under load, through the controller and the agents, judged by the sink: LF loses and
duplicates nothing, OP also reorders nothing, NG may lose. Afterwards the destination's state
equals what one instance that saw all the traffic would hold. A TCP connection survives moves
back and forth; a move whose destination dies half way rolls back."""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from nfx import registry
from nfx.gate import Gate
from nfx.procs import agents, controller
from nfx.testbed import builder
from nfx.traffic.report import measure
from tests.netns.tbutil import Rigs, running_testbed, under_traffic

FLOWS, RATE, DURATION, AT = 1000, 50000, 0.7, 0.3    # the move starts 15k packets in; 20k follow


RIGS = Rigs()


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2) as rec:
        try:
            # give every flow its state on nf0 first
            measure(*RIGS.get(rec["name"], FLOWS), 20000, 0.5, 1.0)
            yield rec
        finally:
            RIGS.close()


def per_flow(name, inst) -> dict[int, int]:
    return {m["sport"]: m["pkts_out"] for m in builder.instance(name, inst).mappings() if m["dport"] == 9000}


def move_under_traffic(name, src, dst, guarantee, mechanism, opts="", flows=FLOWS, rate=RATE, duration=DURATION,
                       **extra):
    gen, sink = RIGS.get(name, flows)
    return under_traffic(name, gen, sink, rate, duration, AT, lambda: controller.call(
        name, "POST", "/move", {"src": src, "dst": dst, "guarantee": guarantee, "mechanism": mechanism,
                                "opts": opts, **extra}),
        judged=lambda r, m: guarantee == "ng" or not (r["lost"] or r["duplicated"] or r["unexpected"]), what="move")


CASES = [(m, g, o) for m in ("dist", "opennf") for g in ("ng", "lf", "op") for o in ("", "pz,ll,er")
         if not (g == "ng" and o)] + [("dist", "ng", "dt"), ("dist", "lf", "pz,ll,er,dt"), ("dist", "op", "pz,ll,er,pc")] + \
    [("slim", g, "") for g in ("ng", "lf", "op")]


def no_armed_rules(name):
    """Every switch rule is plain and the controller left no token in the fired tables (read
    straight from the pins: opening a Steering would clean them)."""
    from pathlib import Path

    from nfx.control.switch import Switch
    for node, info in registry.load(name)["nodes"].items():
        if info["role"] != "switch":
            continue
        s = Switch.open(node, info["ns"], Path(info["pin"]))
        try:
            assert [r.id for r in s.rules() if r.rule.token] == []
            assert len(s.maps["sw_fired"]) == 0
        finally:
            s.close()


@pytest.mark.parametrize("mechanism,guarantee,opts", CASES, ids=[f"{m}-{g}{'-' + o if o else ''}" for m, g, o in CASES])
def test_move_there_and_back(tb, mechanism, guarantee, opts):
    name = tb["name"]
    for src, dst in (("nf0", "nf1"), ("nf1", "nf0")):
        before = per_flow(name, src)
        m, r = move_under_traffic(name, src, dst, guarantee, mechanism, opts)
        assert r["sent"] == RATE * DURATION
        after = per_flow(name, dst)
        assert per_flow(name, src) == {}                   # the source let go of the state
        assert len(after) == FLOWS
        if guarantee in ("lf", "op"):
            assert (r["lost"], r["duplicated"]) == (0, 0), (m, {k: r[k] for k in ("sent", "lost", "duplicated", "reordered")},
                                                             builder.instance(name, src).stats(), builder.instance(name, dst).stats())
            # exactly once, with the state it should see: a single instance's counters
            sent = dict(zip(range(1024, 1024 + FLOWS), r.get("per_flow") or [RATE * DURATION // FLOWS] * FLOWS))
            assert all(after[sp] == before[sp] + sent[sp] for sp in after), "per-flow NAT counters differ"
        if guarantee == "op":
            assert r["reordered"] == 0, (m, r)
        for k in ("move_time_s", "redirect_time_s", "state_chunks", "state_bytes", "packets_redirected",
                  "controller_buffer_peak", "instance_buffer_peak", "max_added_delay_us", "serialization_share"):
            assert k in m
        if "dt" in opts:
            # the source's trigger put the armed rules in force on both switches
            t = m["trigger"]
            assert t["fired"] and len(t["fired_ms"]) == 2 and all(f >= 0 for f in t["fired_ms"]), t
            no_armed_rules(name)


SLOW = [("opennf", "lf", "pz,ll,er"), ("opennf", "op", "pz,ll,er"), ("dist", "op", "pz,ll,er"), ("dist", "lf", "pz,dt")]


@pytest.mark.parametrize("mechanism,guarantee,opts", SLOW, ids=[f"{m}-{g}-{o}" for m, g, o in SLOW])
def test_move_over_a_slow_control_link(tb, mechanism, guarantee, opts):
    """10 ms each way on every control message: the packets OpenNF's controller holds still all
    reach dst, once and (op) in order, though each packet-out takes a round trip."""
    name = tb["name"]
    for src, dst in (("nf0", "nf1"), ("nf1", "nf0")):
        m, r = move_under_traffic(name, src, dst, guarantee, mechanism, opts, ctrl_delay_ms=10)
        assert (r["lost"], r["duplicated"]) == (0, 0), (m, r)
        if guarantee == "op":
            assert r["reordered"] == 0, (m, r)
        # at least a round trip; with dt at least the request's one way
        assert m["ctrl_delay_ms"] == 10 and m["move_time_s"] >= (0.01 if "dt" in opts else 0.02)
        if mechanism == "opennf":
            c = m["controller"]
            # everything src sent up reached the controller, and everything it kept went on to dst
            assert m["src_stats"]["to_ctrl"] == c["held"] + c["dropped_after_cut"], (m["src_stats"], c)
            assert c["left"] == 0 and c["injected"] == c["held"], c
        if "dt" in opts:
            # no control round trip before the switches change: the source sends the trigger
            # one delay in, the switches take it at once, and no control message follows
            t = m["trigger"]
            assert t["fired"] and t["sent_ms"] >= 10 and t["armed_ms"] >= 10, t
            assert max(t["fired_ms"]) - t["sent_ms"] < 5, t
            assert m["move_time_s"] * 1e3 < max(t["sent_ms"], t["armed_ms"]) + m["transfer_s"] * 1e3 + 10, m
            no_armed_rules(name)


def test_move_log_is_json_lines(tb):
    from nfx.control.controller import log_file
    lines = log_file(tb["name"]).read_text().splitlines()
    assert lines and all(json.loads(l)["testbed"] == tb["name"] for l in lines)


def test_bad_move_requests(tb):
    from nfx.errors import BadInput
    for body, msg in (({"src": "nf0", "dst": "nf9"}, "unknown destination"),
                      ({"src": "nf0", "dst": "nf0"}, "same instance"),
                      ({"src": "nf0", "dst": "nf1", "guarantee": "xx"}, "guarantee"),
                      ({"src": "nf0", "dst": "nf1", "opts": "zz"}, "optimisation"),
                      ({"src": "nf0", "dst": "nf1", "opts": "dt", "mechanism": "opennf"}, "dt"),
                      ({"src": "nf0", "dst": "nf1", "opts": "dt", "guarantee": "op"}, "dt"),
                      ({"src": "nf0", "dst": "nf1", "opts": "dt", "filter": "sport=1024"}, "dt"),
                      ({"src": "nf0", "dst": "nf1", "filter": "src=1.2.3.400"}, "IPv4")):
        with pytest.raises(BadInput, match=msg):
            controller.call(tb["name"], "POST", "/move", body)


def test_a_source_whose_move_fails_keeps_no_session(tb):
    """A DiST source that gives up (here: no MovePerFlow within the move's timeout) ends its own
    session, so the next move from it is not refused as "already in progress"."""
    from nfx.agent.client import AgentClient
    from nfx.errors import BadInput, NfxError
    from nfx.state.tables import SCOPES
    name = tb["name"]
    src, dst = AgentClient(name, "nf0", timeout=5), AgentClient(name, "nf1", timeout=5)
    try:
        run = src.move_dist("nf1", 4242, "lf", [], "all", SCOPES, timeout=0.3)
        assert run.held()["ibc"] == []
        with pytest.raises(NfxError, match="MovePerFlow"):
            run.done()                 # the source waited for "go" in vain
        run.close()
        with pytest.raises(BadInput, match="no move in progress"):
            src.request("move_status")
        dst.request("move_end")        # what the controller's rollback does at the destination
    finally:
        src.close()
        dst.close()
    m, r = move_under_traffic(name, "nf0", "nf1", "lf", "dist")
    assert m["flows"] > 0 and r["lost"] == 0
    move_under_traffic(name, "nf1", "nf0", "lf", "dist")


def test_tcp_survives_ten_moves(tb):
    name = tb["name"]
    h1, h2 = tb["nodes"]["h1"]["ns"], tb["nodes"]["h2"]["ns"]
    srv = subprocess.Popen(["ip", "netns", "exec", h2, "iperf3", "-s", "-1", "-p", "5202"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        cli = subprocess.Popen(["ip", "netns", "exec", h1, "iperf3", "-c", "10.0.2.2", "-p", "5202", "-t", "8", "-J"],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        at = "nf0"
        for i in range(10):
            to = "nf1" if at == "nf0" else "nf0"
            controller.call(name, "POST", "/move", {"src": at, "dst": to, "guarantee": "lf",
                                                    "mechanism": "dist" if i % 2 == 0 else "opennf"})
            at = to
            time.sleep(0.3)
        res = json.loads(cli.communicate(timeout=30)[0])
    finally:
        srv.wait(timeout=10)
    assert "error" not in res, res.get("error")
    assert res["end"]["sum_received"]["bytes"] > 1_000_000
    # the connection's NAT mapping moved with it and is where the last move put it
    assert [m for m in builder.instance(name, at).mappings() if m["dport"] == 5202]
    assert at == "nf0"


@pytest.mark.parametrize("opts,data_delay_ms", [("", 200), ("dt", 200), ("ov,dt", 0)])
def test_destination_dies_half_way_rolls_back(tb, opts, data_delay_ms):
    """The destination's agent is killed while the move waits on it: the move is called off, the
    source keeps the flows and the traffic. With a slow data link it dies while the source is
    still beginning the move there (before any switch changes); with ov,dt the armed rules have
    fired on the hold, so the switches are pointed back."""
    name = tb["name"]
    rec = registry.load(name)
    pid = agents.pid_of(rec, "nf1")
    err = {}

    def slow_move():
        try:
            # a slow control channel keeps the move open long enough to kill dst mid-way
            controller.call(name, "POST", "/move", {"src": "nf0", "dst": "nf1", "guarantee": "lf", "opts": opts,
                                                    "mechanism": "dist", "ctrl_delay_ms": 60, "timeout": 5,
                                                    "data_delay_ms": data_delay_ms})
        except Exception as e:
            err["e"] = e
    gen, sink = RIGS.get(name, FLOWS)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", measure(gen, sink, 20000, 3.0, 1.0)))
    t.start()
    time.sleep(0.5)
    mv = threading.Thread(target=slow_move)
    mv.start()
    time.sleep(0.25)
    os.kill(pid, signal.SIGKILL)
    mv.join()
    t.join()
    agents.start(registry.load(name), ["nf1"])
    assert "e" in err and "rolled back" in str(err["e"])
    r = out["r"]
    # src kept processing: the traffic after the failed move went through nf0
    assert r["received"] > 0.9 * r["sent"]
    assert len(per_flow(name, "nf0")) == FLOWS and per_flow(name, "nf1") == {}
    assert Gate(builder.instance(name, "nf0")).marks() == {} and Gate(builder.instance(name, "nf1")).marks() == {}
    no_armed_rules(name)


@pytest.fixture(scope="module")
def ids_tb():
    """An IDS testbed whose 200 flows have their state on nf0, and how many packets it has seen."""
    with running_testbed("sharp", "ids", instances=2) as rec:
        try:
            warm = measure(*RIGS.get(rec["name"], 200), 10000, 0.5, 1.0)
            yield {"name": rec["name"], "at": "nf0", "seen": warm["sent"]}
        finally:
            RIGS.drop(rec["name"])


@pytest.mark.parametrize("mechanism", ["dist", "opennf", "slim"])
def test_ids_counters_equal_a_single_instance(ids_tb, mechanism):
    """IDS per-flow and per-host counters after a loss-free move: what one instance that saw all
    the traffic would hold (the flows move on from wherever the previous case left them)."""
    name, src = ids_tb["name"], ids_tb["at"]
    dst = "nf1" if src == "nf0" else "nf0"
    m, r = move_under_traffic(name, src, dst, "lf", mechanism, flows=200, rate=20000, duration=1.5)
    assert (r["lost"], r["duplicated"]) == (0, 0)
    ids_tb["at"] = dst
    ids_tb["seen"] += r["sent"]
    ids = builder.instance(name, dst)
    flows = {f["sport"]: f["pkts"] for f in ids.flows() if f["dport"] == 9000}
    assert len(flows) == 200 and builder.instance(name, src).flows() == []
    total = ids_tb["seen"]
    assert sum(flows.values()) == total
    [host] = [h for h in ids.hosts() if h["addr"] == "10.0.1.2"]
    assert host["pkts"] == total and host["flows"] == 200


def test_ids_counters_after_a_sharp_handover_equal_a_single_instance(ids_tb):
    """The same after a SHarP handover: the source is found by the controller, the state goes by
    the sources' push (nfx/agent/hsl.py)."""
    name, src = ids_tb["name"], ids_tb["at"]
    dst = "nf1" if src == "nf0" else "nf0"
    gen, sink = RIGS.get(name, 200)
    m, r = under_traffic(name, gen, sink, 20000, 1.5, 0.6, lambda: controller.call(
        name, "POST", "/handover", {"filter": "all", "dst": dst, "priority": 1}), what="handover",
        judged=lambda r, m: not (r["lost"] or r["duplicated"] or r["reordered"]))
    assert m["srcs"] == [src] and (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), (m, r)
    ids_tb["at"] = dst
    ids_tb["seen"] += r["sent"]
    ids = builder.instance(name, dst)
    flows = {f["sport"]: f["pkts"] for f in ids.flows() if f["dport"] == 9000}
    assert len(flows) == 200 and builder.instance(name, src).flows() == []
    assert sum(flows.values()) == ids_tb["seen"]
    [host] = [h for h in ids.hosts() if h["addr"] == "10.0.1.2"]
    assert host["pkts"] == ids_tb["seen"] and host["flows"] == 200


def test_partial_filter_there_and_back(tb):
    """A filter that is not 'all': the NAT's return traffic is steered by exact rules on its
    public tuples; moving back repoints them (no rule ids leak)."""
    name = tb["name"]
    for src, dst in (("nf0", "nf1"), ("nf1", "nf0")):
        m, r = move_under_traffic(name, src, dst, "lf", "dist")
        assert (r["lost"], r["duplicated"]) == (0, 0)
    for src, dst in (("nf0", "nf1"), ("nf1", "nf0")):
        m, r = move_under_traffic(name, src, dst, "lf", "dist", filter="proto=udp")
        assert (r["lost"], r["duplicated"]) == (0, 0)
        assert len(per_flow(name, dst)) == FLOWS and per_flow(name, src) == {}
    from nfx.control.steer import Steering
    s = Steering(name)
    used = sum(len(sw.rules()) for sw in s.sw.values())
    assert used < 3 * FLOWS, f"{used} switch rules in use: rule ids leak"


def test_range_filter_refused_before_anything_changes(tb):
    from nfx.errors import BadInput
    with pytest.raises(BadInput, match="single sport"):
        controller.call(tb["name"], "POST", "/move", {"src": "nf0", "dst": "nf1", "filter": "sport=1024-1100"})
    assert Gate(builder.instance(tb["name"], "nf0")).marks() == {}


@pytest.mark.parametrize("opts", ["", "ov", "dt", "ov,dt"])
def test_dist_order_of_steps(tb, opts):
    """DiST as published: the switches change only once the state is in at dst (the source's
    MovePerFlow ack comes first); with ov (nfx's overlap) they change while the state is still
    on its way. A 30 ms data link (the state push) against a 5 ms control link makes the order
    plain in the stamps (state_in: dst's agent; switch_update: the switch side). dt without ov
    fires once the state is in; with ov on hold."""
    name = tb["name"]
    for src, dst in (("nf0", "nf1"), ("nf1", "nf0")):
        m, r = move_under_traffic(name, src, dst, "lf", "dist", opts, ctrl_delay_ms=5, data_delay_ms=30)
        assert (r["lost"], r["duplicated"]) == (0, 0), (m, r)
        ph = m["phases_ms"]
        assert m["data_delay_ms"] == 30 and m["data_rate_mbit"] == 0
        if "ov" in opts:
            assert ph["switch_update"] < ph["state_in"], ph
            assert m["go_ms"] is None                     # one request: no separate MovePerFlow
        else:
            assert ph["switch_update"] > ph["state_in"], ph
            # MovePerFlow reached the source one control trip after its ack of the hold
            assert m["go_ms"] is not None and m["go_ms"] >= 10, m["go_ms"]
        # the data link's delay is on the push: begin at dst and at least one put, each a round trip
        assert m["move_time_s"] >= 0.12 if "ov" not in opts else m["move_time_s"] >= 0.09, m
        if "dt" in opts:
            assert m["trigger"]["fired"], m["trigger"]
            no_armed_rules(name)


def test_data_link_rate_paces_the_push(tb):
    """The emulated data link's rate is on the state push: at 20 Mbit/s the state takes at least
    its size over that rate to reach dst (with ov the source pushes at once, so the transfer time
    is the push's own)."""
    name = tb["name"]
    for src, dst in (("nf0", "nf1"), ("nf1", "nf0")):
        m, r = move_under_traffic(name, src, dst, "lf", "dist", "ov", data_rate_mbit=20)
        assert (r["lost"], r["duplicated"]) == (0, 0), (m, r)
        floor = m["state_bytes"] * 8 / 20e6
        assert m["data_rate_mbit"] == 20 and m["transfer_s"] >= 0.9 * floor, (m["transfer_s"], floor)
        assert m["move_time_s"] >= 0.9 * floor
