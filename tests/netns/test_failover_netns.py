"""Failover on netns/pair.json (nf0 primary, nf1 its secondary in cluster c0, nf2 a spare), with
real packets (issue 14). `nfx cluster up` starts the failure detection unit in the controller:

- nf0 killed (agent SIGKILL, program detached) under 100k pps: the traffic comes back through
  nf1 within 100 ms of the kill, nf1 holds every NAT mapping nf0 had (same public tuple), its
  counters at most S_batch - 1 packets a flow behind; nf2 becomes nf1's secondary;
- nf1 paused (SIGSTOP: its program still runs) under traffic: nf2 takes over, nf1 is fenced,
  and once resumed it forwards nothing and stays out of the pair;
- nf0 back (`nfx cluster rejoin`): fenced, it syncs as nf2's secondary and takes no traffic;
  `nfx cluster failback` gives it the traffic back by an order-preserving move: nothing lost,
  duplicated or reordered. Failback to an instance that has not synced is refused."""
import json
import os
import signal
import time

import pytest

from nfx import registry
from nfx.bench import failover as F
from nfx.gate import Gate
from nfx.nfs import open_node
from nfx.procs import agents
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import nfx, running_testbed, under_traffic as traffic_with

FLOWS = 200
RATE = 100_000
BATCH = 30
# A counter is short by at most S_batch - 1 packets when its flow's last boundary batch reached
# the secondary before the kill. A pair's sharer sends a batch as soon as it reads it, but that
# and one request still take a few ms; a kill inside that window after a boundary (the flows
# here run in lockstep) loses that batch too, so one batch more is what the mechanism bounds.
# `nfx bench failover` counts how often the S_batch - 1 target holds.
LATE_BOUND = 2 * BATCH - 1


@pytest.fixture(scope="module")
def tb():
    with running_testbed("pair", "nat", hold_slots=256) as rec:
        with rig(rec["name"], FLOWS) as sides:
            yield rec, sides


def status(name) -> dict:
    return F.failover_status(name)


def fenced(name, inst) -> bool:
    return Gate(open_node(registry.load(name).nf(inst))).fenced()


def wait_secondary(name, slot, inst, timeout=10.0) -> None:
    """After recovery the FDU syncs the new secondary (its base snapshot): wait for that."""
    end = time.monotonic() + timeout
    while status(name)["slots"][slot]["secondary"] != inst:
        assert time.monotonic() < end, status(name)
        time.sleep(0.05)


def counts(name, inst) -> dict[int, int]:
    """Each generator flow's packet count at the instance, by source port (NAT: the mapping's
    outbound packets; IDS: the flow's packets)."""
    nf = builder.instance(name, inst)
    if rec_kind(name) == "nat":
        return {m["sport"]: m["pkts_out"] for m in nf.mappings() if m["dport"] == 9000}
    return {f["sport"]: f["pkts"] for f in nf.flows() if f["dport"] == 9000}


def rec_kind(name) -> str:
    return registry.load(name)["nf"]


def short_by(now: dict[int, int], base: dict[int, int], gen, sink) -> list[int]:
    """Per flow (flow i leaves from port gen.sport_base + i): (its count before the run + what
    the sink got of it in the run) - its count now."""
    return [base.get(gen.sport_base + i, 0) + f.received - now.get(gen.sport_base + i, 0)
            for i, f in enumerate(sink.flows())]


def forwarded(name, inst) -> int:
    return builder.instance(name, inst).stats().get("v_redirect", 0)


def under_traffic(name, gen, sink, action, rate=RATE, duration=1.4, at=0.6):
    """`action()` `at` s into the traffic, with the sink's count sampled throughout."""
    with F.Timeline(sink, gen=gen) as tl:
        a, r = traffic_with(name, gen, sink, rate, duration, at, action, what="failover")
    return a, tl, r


def test_cluster_up_with_pairs_starts_the_failure_detector(tb):
    rec, (gen, sink) = tb
    name = rec["name"]
    # 4 heartbeats of 10 ms: a loaded 2-CPU machine delays a beat by up to ~25 ms
    r = nfx("cluster", "up", "--name", name, "--batch", str(BATCH), "--misses", "4", "--json")
    assert r.returncode == 0, r.stderr
    up = json.loads(r.stdout)
    assert up["pairs"] == {"nf0": "nf1"} and up["spares"] == ["nf2"]
    assert up["failover"]["slots"] == {"nf0": {"primary": "nf0", "secondary": "nf1"}}
    r = measure(gen, sink, 50_000, 0.5, 0.5)
    assert r["lost"] == 0, r
    st = json.loads(nfx("cluster", "status", "--name", name, "--json").stdout)
    assert st["pairs"] == {"nf0": {"primary": "nf0", "secondary": "nf1", "epoch": 1}}
    fo = st["failover"]
    assert fo["beats"]["nf0"] > 10 and fo["beats"]["nf1"] > 10 and not fo["events"] and not fo["fenced"]


def test_a_killed_primary_fails_over_within_100ms_keeping_every_mapping(tb):
    rec, (gen, sink) = tb
    name = rec["name"]
    time.sleep(0.5)                 # idle: the sharing's sweep has sent every flow's last packets
    base = counts(name, "nf0")
    before, times = {}, {}

    def kill():
        before.update(F.mappings(name, "nf0"))
        t0 = time.time()
        t_kill = F.kill_instance(name, "nf0", times)
        return t_kill, F.wait_failed_over(name, "nf0", t0)
    (t_kill, ev), tl, r = under_traffic(name, gen, sink, kill)
    gap = tl.gap_after(t_kill, t_loss=times["sigkill"])
    assert ev["outcome"] == "failed over" and ev["by"] == "heartbeat" and ev["promoted"] == "nf1", ev
    assert gap["recovery_ms"] is not None and gap["recovery_ms"] < 100, (gap, ev)
    # what was lost is the gap's packets (what the generator sent from the kill to 10 ms past
    # the recovery: it sends faster than RATE while catching up), nothing after it; nothing
    # twice, nothing out of order
    assert 0 < r["lost"] <= gap["sent_in_gap"], (r, gap)
    assert (r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0), r
    kept = F.compare_mappings(before, F.mappings(name, "nf1"), BATCH)
    assert kept["nat_mappings"] == FLOWS and kept["nat_mappings_lost"] == 0, kept
    # each flow's counter against what one instance that never failed would hold (every packet
    # the sink got passed one of the two): short by what nf0 counted since the flow's last batch
    drift = short_by(counts(name, "nf1"), base, gen, sink)
    assert 0 <= min(drift) and max(drift) <= LATE_BOUND, sorted(drift)
    # nf1 serves, nf2 stands by with a base of nf1's state, nf0 is fenced
    wait_secondary(name, "nf0", "nf2")
    fo = status(name)
    assert fo["slots"]["nf0"] == {"primary": "nf1", "secondary": "nf2"} and fo["fenced"] == ["nf0"]
    assert fenced(name, "nf0")
    r = measure(gen, sink, 50_000, 0.5, 0.5)
    assert r["lost"] == 0, r


def test_a_paused_primary_resumed_after_promotion_does_not_forward(tb):
    rec, (gen, sink) = tb
    name = rec["name"]
    pid = agents.pid_of(registry.load(name), "nf1")

    def pause():
        t0 = time.time()
        os.kill(pid, signal.SIGSTOP)
        return F.wait_failed_over(name, "nf1", t0)
    try:
        ev, tl, r = under_traffic(name, gen, sink, pause)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ev["outcome"] == "failed over" and ev["promoted"] == "nf2", ev
    assert (r["duplicated"], r["reordered"]) == (0, 0), r
    # resumed, it beats again, yet stays fenced and out of the pair: it forwards nothing
    beats = status(name)["beats"]["nf1"]
    was = forwarded(name, "nf1")
    r = measure(gen, sink, 50_000, 0.5, 0.5)
    assert r["lost"] == 0, r
    fo = status(name)
    assert fo["beats"]["nf1"] > beats and fenced(name, "nf1")
    assert fo["slots"]["nf0"]["primary"] == "nf2" and forwarded(name, "nf1") == was


def test_a_restarted_primary_takes_no_traffic_until_synced_then_fails_back(tb):
    rec, (gen, sink) = tb
    name = rec["name"]
    # nf0 is no secondary yet: it has not synced, so it takes nothing back
    r = nfx("cluster", "failback", "--name", name, "--slot", "nf0", "--to", "nf0")
    assert r.returncode == 2 and "synced" in r.stderr, r.stderr
    r = nfx("cluster", "rejoin", "--name", name, "--instance", "nf0", "--json")
    assert r.returncode == 0, r.stderr
    rj = json.loads(r.stdout)
    assert rj["role"] == "secondary" and rj["primary"] == "nf2" and rj["fenced"] and rj["agent_started"]
    assert sorted(rj["reattached"]) == ["si", "so"]
    was = forwarded(name, "nf0")
    r = measure(gen, sink, 50_000, 0.5, 0.5)
    assert r["lost"] == 0 and forwarded(name, "nf0") == was, r
    fb, _, r = under_traffic(name, gen, sink, lambda: json.loads(nfx("cluster", "failback", "--name", name, "--slot", "nf0",
                                                               "--to", "nf0", "--json").stdout),
                             rate=20_000, duration=1.2, at=0.4)
    assert fb["primary"] == "nf0" and fb["secondary"] == "nf2", fb
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0), r
    assert not fenced(name, "nf0") and len(F.mappings(name, "nf0")) == FLOWS
    r = measure(gen, sink, 50_000, 0.5, 0.5)
    assert r["lost"] == 0 and forwarded(name, "nf0") > was, r


def test_cluster_down_stops_the_failure_detector(tb):
    rec, _ = tb
    name = rec["name"]
    r = nfx("cluster", "down", "--name", name, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["failover"]["on"] is False and len(d["failover"]["events"]) == 2
    assert status(name) == {}
