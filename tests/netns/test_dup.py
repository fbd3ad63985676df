"""The duplication baseline (nfx/migrate/dup.py) under load, through the CLI, the controller and
the agents, judged by the sink: lf loses and duplicates nothing and leaves the destination with
what one instance that saw all the traffic would hold (NAT and IDS); ng duplicates nothing; op
reorders nothing either; a destination killed while the switches duplicate rolls the move back
with nothing lost. One testbed per NF for the module. Its hold FIFOs are tiny (16 packets), so
every move's holds outgrow them and go on through the buffer ring (the destination's copies, and
with op its own packets): the results must not change."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from nfx import registry
from nfx.control.switch import Switch
from nfx.errors import BadInput
from nfx.gate import Gate
from nfx.procs import agents, controller
from nfx.testbed import builder
from nfx.traffic.report import measure
from tests.netns.tbutil import Rigs, nfx, running_testbed, under_traffic

FLOWS, RATE, DURATION, AT = 1000, 50000, 1.5, 0.8
RIGS = Rigs()


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2, hold_slots=16) as rec:
        try:
            measure(*RIGS.get(rec["name"], FLOWS), 20000, 0.5, 1.0)      # every flow's state on nf0
            yield rec
        finally:
            RIGS.close()


def per_flow(name, inst) -> dict[int, int]:
    return {m["sport"]: m["pkts_out"] for m in builder.instance(name, inst).mappings() if m["dport"] == 9000}


def dup_move(name, src, dst, guarantee, flows=FLOWS, rate=RATE, duration=DURATION, via_cli=False, **extra):
    gen, sink = RIGS.get(name, flows)

    def move():
        if not via_cli:
            return controller.call(name, "POST", "/move", {"src": src, "dst": dst, "guarantee": guarantee,
                                                          "mechanism": "dup", **extra})
        r = nfx("move", "--name", name, "--from", src, "--to", dst, "--mechanism", "dup", "-g", guarantee,
                "--json", timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    # the CLI's own start (~0.6 s, more on a busy machine) comes out of the traffic's time
    return under_traffic(name, gen, sink, rate, duration, 0.1 if via_cli else AT, move, what="dup move",
                         judged=lambda r, m: not (r["lost"] or r["duplicated"] or r["unexpected"]))


def test_lf_there_and_back(tb):
    """nf0 -> nf1 through the CLI, back through the controller's API: nothing lost or output
    twice, the NAT counters of a single instance, and the figures of the duplication."""
    name = tb["name"]
    for src, dst, cli in (("nf0", "nf1", True), ("nf1", "nf0", False)):
        before = per_flow(name, src)
        spilled = {i: builder.instance(name, i).stats().get("r_hold_spilled", 0) for i in (src, dst)}
        m, r = dup_move(name, src, dst, "lf", via_cli=cli)
        print(json.dumps({"move": m, "sink": {k: r[k] for k in ("sent", "received", "lost", "duplicated")}}))
        assert (r["lost"], r["duplicated"], r["unexpected"]) == (0, 0, 0), (m, r)
        assert r["sent"] == RATE * DURATION
        after = per_flow(name, dst)
        assert per_flow(name, src) == {} and len(after) == FLOWS
        sent = dict(zip(range(1024, 1024 + FLOWS), r.get("per_flow") or [RATE * DURATION // FLOWS] * FLOWS))
        assert all(after[sp] == before[sp] + sent[sp] for sp in after), "per-flow NAT counters differ"
        d = m["dup"]
        # dst processed every copy it received in shadow, once (but the IBC's, one per side)
        assert d["src_copies"] == d["dst_copies"] > 2 and d["shadow_pkts"] == d["dst_copies"] - 2, d
        assert d["shadow_bytes"] >= 60 * d["shadow_pkts"] and d["snapshot_chunks"] == m["state_chunks"] > 0
        # both held copies back (the destination's released ones counted in shadow above), more
        # than their FIFOs took
        assert d["src_held"] > 0 and d["src_max_hold_us"] > 0 and d["dst_buffer_peak"] > 0, d
        assert builder.instance(name, dst).stats().get("r_hold_spilled", 0) > spilled[dst]
        ph = m["phases_ms"]
        order = ["held", "dup_on", "src_cut", "snapshot_sent", "src_released", "caught_up", "repointed", "copies_in"]
        assert [ph[k] for k in order] == sorted(ph[k] for k in order), ph
        for k in ("instance_buffer_peak", "max_added_delay_us", "move_time_s", "state_bytes"):
            assert k in m
        # nothing left behind: marks, filters, move settings, tagged rules
        for inst in ("nf0", "nf1"):
            g = Gate(builder.instance(name, inst))
            assert g.marks() == {} and g.filters() == {} and g.move_cfg().dup == 0
        assert not tagged_rules(name)


def test_lf_one_flow_there_and_back(tb):
    """A partial filter: one flow, whose return traffic the outside switch steers by its NAT
    public tuple (exact rules, tagged too); the other flows stay where they are, untouched."""
    name = tb["name"]
    for src, dst in (("nf0", "nf1"), ("nf1", "nf0")):
        before, others = per_flow(name, src), per_flow(name, dst)
        m, r = dup_move(name, src, dst, "lf", filter="sport=1024")
        assert (r["lost"], r["duplicated"], r["unexpected"]) == (0, 0, 0), (m, r)
        sent = dict(zip(range(1024, 1024 + FLOWS), r.get("per_flow") or [RATE * DURATION // FLOWS] * FLOWS))
        after_src, after_dst = per_flow(name, src), per_flow(name, dst)
        assert 1024 not in after_src and after_dst[1024] == before[1024] + sent[1024]
        assert set(after_src) == set(before) - {1024} and set(after_dst) == set(others) | {1024}
        d = m["dup"]
        # the one flow has 50 pps: the duplication (tens of ms) may catch none of its packets
        assert d["src_copies"] == d["dst_copies"] >= 2 and d["shadow_pkts"] == d["dst_copies"] - 2, d
        assert d["dst_copies"] - 2 <= sent[1024]              # copies of that one flow only
        assert not tagged_rules(name)


def test_ng_outputs_nothing_twice(tb):
    name = tb["name"]
    at = "nf0" if per_flow(name, "nf0") else "nf1"
    to = "nf1" if at == "nf0" else "nf0"
    m, r = dup_move(name, at, to, "ng")
    assert (r["duplicated"], r["unexpected"]) == (0, 0), (m, r)
    assert len(per_flow(name, to)) == FLOWS and per_flow(name, at) == {}
    assert m["dup"]["src_held"] == 0 and m["dup"]["shadow_pkts"] > 0
    assert Gate(builder.instance(name, to)).move_cfg().dup == 0


def test_op_there_and_back(tb):
    """op: also nothing reordered, though the source's last outputs and the destination's first
    leave by two veths (the destination holds its own until the source's have left)."""
    name = tb["name"]
    at = "nf0" if per_flow(name, "nf0") else "nf1"
    for src, dst in ((at, "nf1" if at == "nf0" else "nf0"), ("nf1" if at == "nf0" else "nf0", at)):
        before = per_flow(name, src)
        m, r = dup_move(name, src, dst, "op")
        assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0), (m, r)
        after = per_flow(name, dst)
        sent = dict(zip(range(1024, 1024 + FLOWS), r.get("per_flow") or [RATE * DURATION // FLOWS] * FLOWS))
        assert per_flow(name, src) == {} and all(after[sp] == before[sp] + sent[sp] for sp in after)
        ph = m["phases_ms"]
        assert ph["repointed"] <= ph["copies_in"] <= ph["src_flushed"] <= ph["own_released"], ph
        assert m["dup"]["dst_own_held"] > 0, m["dup"]                # its own packets were held too
        assert builder.instance(name, dst).stats().get("r_hold_spilled", 0) > 0


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs a CPU to stall and another to run on")
def test_op_when_the_sources_next_hop_lags(tb):
    """The race op guards against, made certain: the next hop of the source's output (the outside
    switch's port facing it) is not drained for 0.5 s around the move, so the source's last
    outputs wait there while the destination's first would leave by its own veth at once. The
    destination holds its own until the source's have left: nothing reordered (10 flows, 250 pps:
    what piles up stays under the ring's 256 frames, and under the releases' wait threshold)."""
    from tests.netns.stall import stalled_napi
    name = tb["name"]
    src = "nf0" if per_flow(name, "nf0") else "nf1"
    dst = "nf1" if src == "nf0" else "nf0"
    so = next(n for n, i in tb["nodes"].items() if i["role"] == "switch" and src in i["ifaces"] and
              "h2" in i["ifaces"])
    gen, sink = RIGS.get(name, 10)
    out = {}
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        t = threading.Thread(target=lambda: out.setdefault("r", measure(gen, sink, 250, 1.5, 1.0,
                                                                        before_read=lambda: mv.join())))
        mv = threading.Thread(target=lambda: out.setdefault("m", controller.call(
            name, "POST", "/move", {"src": src, "dst": dst, "guarantee": "op", "mechanism": "dup"})))
        t.start()
        time.sleep(0.4)
        with stalled_napi(tb["nodes"][so]["ns"], tb["nodes"][so]["ifaces"][src], cpu=1, seconds=0.5):
            mv.start()
            time.sleep(0.45)
        t.join()
    finally:
        os.sched_setaffinity(0, mine)
    r, m = out["r"], out.get("m")
    assert m is not None, "the move failed"
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0), (m, r)
    assert m["dup"]["dst_own_held"] > 0 and m["phases_ms"]["own_released"] - m["phases_ms"]["copies_in"] > 50, m


def test_options_are_refused(tb):
    for body, msg in (({"opts": "ll"}, "no optimisation"), ({"opts": "pz,er", "guarantee": "op"}, "no optimisation")):
        with pytest.raises(BadInput, match=msg):
            controller.call(tb["name"], "POST", "/move", {"src": "nf0", "dst": "nf1", "mechanism": "dup", **body})


def tagged_rules(name) -> list:
    out = []
    for node, info in registry.load(name)["nodes"].items():
        if info["role"] == "switch":
            s = Switch.open(node, info["ns"], Path(info["pin"]))
            try:
                out += [r.id for r in s.rules() if r.rule.tagged]
            finally:
                s.close()
    return out


def test_destination_dies_while_duplicated_rolls_back(tb):
    """The destination's agent is killed once the switches duplicate (its copies are being
    shadowed, the source holds its own): the move is called off, the switches go back to the
    source alone, the source processes what it held, and the sink sees nothing lost."""
    name = tb["name"]
    src = "nf0" if per_flow(name, "nf0") else "nf1"
    dst = "nf1" if src == "nf0" else "nf0"
    pid = agents.pid_of(registry.load(name), dst)
    err = {}

    def slow_move():
        try:
            # a slow data link keeps the snapshot on its way while dst dies
            controller.call(name, "POST", "/move", {"src": src, "dst": dst, "guarantee": "lf", "mechanism": "dup",
                                                    "timeout": 5, "data_delay_ms": 300})
        except Exception as e:
            err["e"] = e
    gen, sink = RIGS.get(name, FLOWS)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", measure(gen, sink, 20000, 3.0, 1.0)))
    t.start()
    time.sleep(0.5)
    mv = threading.Thread(target=slow_move)
    mv.start()
    t0 = time.monotonic()
    while not tagged_rules(name):
        assert time.monotonic() - t0 < 10 and mv.is_alive(), f"the switches never duplicated: {err}"
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    mv.join()
    t.join()
    agents.start(registry.load(name), [dst])
    assert "e" in err and "rolled back" in str(err["e"]), err
    r = out["r"]
    assert (r["lost"], r["duplicated"], r["unexpected"]) == (0, 0, 0), r
    assert len(per_flow(name, src)) == FLOWS and per_flow(name, dst) == {}
    for inst in (src, dst):
        g = Gate(builder.instance(name, inst))
        assert g.marks() == {} and g.move_cfg().dup == 0
    assert not tagged_rules(name)


@pytest.fixture(scope="module")
def ids_tb():
    with running_testbed("sharp", "ids", instances=2) as rec:
        try:
            warm = measure(*RIGS.get(rec["name"], 200), 10000, 0.5, 1.0)
            yield {"name": rec["name"], "seen": warm["sent"]}
        finally:
            RIGS.drop(rec["name"])


def test_ids_counters_equal_a_single_instance(ids_tb):
    name = ids_tb["name"]
    m, r = dup_move(name, "nf0", "nf1", "lf", flows=200, rate=20000, duration=1.5)
    assert (r["lost"], r["duplicated"]) == (0, 0), (m, r)
    total = ids_tb["seen"] + r["sent"]
    ids = builder.instance(name, "nf1")
    flows = {f["sport"]: f["pkts"] for f in ids.flows() if f["dport"] == 9000}
    assert len(flows) == 200 and builder.instance(name, "nf0").flows() == []
    assert sum(flows.values()) == total
    [host] = [h for h in ids.hosts() if h["addr"] == "10.0.1.2"]
    assert host["pkts"] == total and host["flows"] == 200
    assert m["dup"]["shadow_pkts"] > 0
