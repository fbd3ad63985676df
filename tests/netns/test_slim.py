"""SLiM moves (nfx/migrate/slim.py) under load, judged by the sink: a split of an instance, then a
merge onto an instance that already runs other flows, a statelet ring that overflows (the move
falls back to a fresh snapshot), and a destination that dies mid-move. The flows come from 8
source addresses, so a filter on a /30 takes half of them. The instances' statelet rings are
small (1 MiB, about 370 ms of this traffic) so that a stalled reader overflows one quickly."""
import ipaddress
import threading
import time

import pytest

from nfx import registry
from nfx.errors import NfxError
from nfx.procs import agents, controller
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import running_testbed, under_traffic

FLOWS, PER_ADDR, BASE = 1000, 125, "10.0.1.16"
HALF_A, HALF_B = "src=10.0.1.16/30", "src=10.0.1.20/30"
RATE, DURATION, AT = 40000, 1.5, 0.6


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2, statelet_ring_kib=1024) as rec:
        with rig(rec["name"], FLOWS, src_ip=BASE, flows_per_addr=PER_ADDR) as (gen, sink):
            warm = measure(gen, sink, 20000, 0.5, 1.0)       # every flow's state on nf0
            assert warm["lost"] == 0
            yield {"name": rec["name"], "gen": gen, "sink": sink, "seen": [each(warm)]}


def per_flow(name: str, inst: str) -> dict[int, int]:
    """Packets out of each flow's mapping, by the generator's flow index."""
    base = int(ipaddress.IPv4Address(BASE))
    return {(int(ipaddress.IPv4Address(m["src"])) - base) * PER_ADDR + m["sport"] - 1024: m["pkts_out"]
            for m in builder.instance(name, inst).mappings() if m["dport"] == 9000}


def slim(tb, src, dst, flt, guarantee="op", **extra):
    name = tb["name"]
    m, r = under_traffic(name, tb["gen"], tb["sink"], RATE, DURATION, AT, lambda: controller.call(
        name, "POST", "/move", {"src": src, "dst": dst, "filter": flt, "guarantee": guarantee, "mechanism": "slim",
                                **extra}),
        judged=lambda r, m: not (r["lost"] or r["duplicated"] or r["reordered"] or r["unexpected"]), what="move")
    tb["seen"].append(each(r))
    return m, r


def each(r) -> int:
    """Packets of each flow in a run: the generator goes round the flows, one packet each."""
    assert r["sent"] % FLOWS == 0, r["sent"]
    return r["sent"] // FLOWS


def expected(tb) -> list[int]:
    """What one instance that saw all the traffic would count per flow."""
    return [sum(tb["seen"])] * FLOWS


def clean(r) -> bool:
    return (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0)


def test_split_then_merge(tb):
    """Half the flows go to nf1 (a split), then the other half joins them there (a merge: nf1
    runs the first half meanwhile). Nothing is lost, duplicated or reordered, and every
    connection's counters are what a single instance would hold; the NAT's public ports of the
    two halves never collide (each instance has its own slice of the range)."""
    name = tb["name"]
    m1, r1 = slim(tb, "nf0", "nf1", HALF_A)
    assert clean(r1), r1
    want = expected(tb)
    a = per_flow(name, "nf1")
    assert len(a) == FLOWS // 2 and all(a[i] == want[i] for i in a), "split: per-flow counters differ"
    assert len(per_flow(name, "nf0")) == FLOWS // 2
    m2, r2 = slim(tb, "nf0", "nf1", HALF_B)
    assert clean(r2), r2
    want = expected(tb)
    both = per_flow(name, "nf1")
    assert per_flow(name, "nf0") == {}
    assert both == {i: want[i] for i in range(FLOWS)}, "merge: per-flow counters differ from a single instance's"
    publics = [m["public"] for m in builder.instance(name, "nf1").mappings()]
    assert len(set(publics)) == len(publics) == FLOWS
    # back to nf0 as a whole, for the tests after this one
    m3, r3 = slim(tb, "nf1", "nf0", "all")
    assert clean(r3), r3
    assert per_flow(name, "nf0") == dict(enumerate(expected(tb)))
    for m in (m1, m2, m3):
        s = m["slim"]
        assert m["mechanism"] == "slim" and m["flows"] >= FLOWS // 2
        # a record the NF could not write (r_statelet_ring_full) is always met by a fresh snapshot;
        # 1-2 per move are sometimes counted here though the reader is never more than ~10 ms
        # behind (the README's open items), and the state must come out exact either way
        assert (s["resyncs"] > 0) == (s["statelet_ring_drops"] > 0), (m["filter"], s)
        # the generator goes round the flows in order, one half's after the other's (12.5 ms
        # each at this rate): a half's move of ~12 ms may see none of its packets, so no
        # statelets; the whole instance's always has some
        assert s["statelet_records"] > 0 or m is not m3, (m["filter"], s)
        assert 0 < s["sigma"] < 1.5 if s["statelet_records"] else s["sigma"] == 0, (m["filter"], s)
        assert s["replay"].get("orphans", 0) == 0      # none applied: none waiting
        assert m["bytes_on_wire"]["total"] == m["bytes_on_wire"]["snapshot"] + m["bytes_on_wire"]["statelets"] + \
            m["bytes_on_wire"]["control"]
        assert set(m["phases_ms"]) >= {"mirroring", "ready", "steered", "applied", "settled"}


def test_a_full_ring_falls_back_to_a_fresh_snapshot(tb):
    """The source stops reading its ring for 800 ms (emulated): at 40k pps the 1 MiB ring
    overflows, the NF counts what it could not write, and the source sends a fresh snapshot
    that replaces what nf1 had. The state still comes out exact and nothing is lost."""
    name = tb["name"]
    m, r = slim(tb, "nf0", "nf1", "all", stall_reader_ms=800)
    assert clean(r), r
    s = m["slim"]
    assert s["statelet_ring_drops"] > 0 and s["resyncs"] >= 1, s
    assert per_flow(name, "nf1") == dict(enumerate(expected(tb)))
    m, r = slim(tb, "nf1", "nf0", "all")
    assert clean(r), r
    assert per_flow(name, "nf0") == dict(enumerate(expected(tb)))


def test_destination_dies_mid_move(tb):
    """nf1's agent is killed while the source streams to it: the move is called off, nf0 keeps
    the flows and their state, and the traffic loses nothing."""
    name = tb["name"]
    pid = agents.pid_of(registry.load(name), "nf1")
    err = {}

    def move():
        try:
            controller.call(name, "POST", "/move", {"src": "nf0", "dst": "nf1", "guarantee": "op",
                                                    "mechanism": "slim", "stall_reader_ms": 1500, "timeout": 5})
        except NfxError as e:
            err["e"] = e
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", measure(tb["gen"], tb["sink"], 20000, 3.0, 1.0)))
    t.start()
    try:
        time.sleep(0.5)
        mv = threading.Thread(target=move)
        mv.start()
        time.sleep(0.6)
        import os
        import signal
        os.kill(pid, signal.SIGKILL)
        mv.join(timeout=60)
    finally:
        t.join()
        agents.start(registry.load(name), ["nf1"])
    r = out["r"]
    tb["seen"].append(each(r))
    assert "e" in err and "rolled back" in str(err["e"]), err
    assert clean(r), r
    assert per_flow(name, "nf0") == dict(enumerate(expected(tb)))
    assert per_flow(name, "nf1") == {}
