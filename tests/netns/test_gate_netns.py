"""The gate's move actions with real traffic: buffering and release without a packet lost,
duplicated or overtaken; redirect to another instance over the peer link."""
import os
import threading
import time

import pytest

from nfx import layout as L
from nfx.gate import Gate, Releaser
from nfx.loader.ifstats import IfCounters
from nfx.filter import parse
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.stall import stalled_napi
from tests.netns.tbutil import running_testbed


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2) as rec:
        yield rec


def in_thread(fn, *args):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn(*args)))
    t.start()
    return t, out


def test_buffer_then_release_in_order(tb):
    nf0 = builder.instance(tb["name"], "nf0")
    info = tb["nodes"]["nf0"]
    # as a move releases: waiting while the next hop's ring is full (a blind release into a busy
    # ring loses what does not fit)
    rel = Releaser(nf0, info["ns"], info["release_if"], tuple(info["wiring"]))
    ring = Gate(nf0).ring()
    held = []
    try:
        with rig(tb["name"], 1000) as (gen, sink):
            t, out = in_thread(measure, gen, sink, 50000, 2.0, 1.0)
            time.sleep(0.4)
            Gate(nf0).set_filter(0, parse("all"), L.Action.BUFFER, tag=7)
            t_end = time.monotonic() + 0.5
            while time.monotonic() < t_end:
                held += ring.poll(20)
            assert len(held) > 5000                    # the gate really held traffic back
            Gate(nf0).clear_filter(0)
            Gate(nf0).set_move_cfg(drain_epoch=7)
            released = 0
            quiet_since = None
            while t.is_alive() or quiet_since is None or time.monotonic() - quiet_since < 0.3:
                batch = held + ring.poll(5)
                held = []
                if batch:
                    rel.release(batch)
                    released += len(batch)
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
            t.join()
        r = out["r"]
        assert r["sent"] > 80000
        s = nf0.stats()
        assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), (str(r), str(s), released)
        assert s["r_buffered"] == s["r_released"] == released
        assert s.get("r_buf_ring_full", 0) == 0 and s.get("v_aborted", 0) == 0
        # every mark flipped back to PROCESS once its backlog was out
        assert all(m.action == L.Action.PROCESS and m.buffered == m.released for m in Gate(nf0).marks().values())
    finally:
        ring.close()
        rel.close()
        # the next tests start from a clean gate, whatever happened here
        Gate(nf0).clear_filter(0)
        Gate(nf0).unmark()
        Gate(nf0).reset_move()


def test_hold_in_the_gate_then_release_in_order(tb):
    """move_cfg.hold: the gate keeps held packets in its own FIFO (nfx_hold.h) and the release
    path replays them from there under live traffic: nothing lost, duplicated or overtaken,
    none through the agent's ring, every mark flipped back, and the hold's figures exact."""
    nf0 = builder.instance(tb["name"], "nf0")
    info = tb["nodes"]["nf0"]
    g = Gate(nf0)
    rel = Releaser(nf0, info["ns"], info["release_if"], tuple(info["wiring"]))
    ring = g.ring()
    before = nf0.stats()
    head0 = g.hold_state().head
    try:
        with rig(tb["name"], 1000) as (gen, sink):
            t, out = in_thread(measure, gen, sink, 50000, 1.5, 1.0)
            time.sleep(0.4)
            g.set_move_cfg(epoch=9, hold=1)
            g.set_filter(0, parse("all"), L.Action.BUFFER, tag=9)
            time.sleep(0.15)
            g.clear_filter(0)
            g.set_move_cfg(drain_epoch=9)
            released = 0
            while t.is_alive():
                released += rel.release_held() or (time.sleep(0.0005) or 0)
            t.join()
            released += rel.release_held()
        r = out["r"]
        hs = g.hold_state()
        s = {k: v - before.get(k, 0) for k, v in nf0.stats().items()}
        assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), (str(r), str(s))
        held = (hs.head - head0) & 0xFFFFFFFF
        assert held > 5000 and hs.head == hs.cursor                 # it held traffic, and all of it went
        assert s["r_buffered"] == s["r_released"] == released == held
        assert s.get("r_hold_spilled", 0) == 0 and s.get("r_buf_ring_full", 0) == 0
        assert ring.poll(0) == []
        assert 0 < hs.peak <= held and hs.epoch == 9 and hs.max_wait_ns >= 100e6   # held since the filter went up
        assert all(m.action == L.Action.PROCESS and m.buffered == m.released for m in g.marks().values())
    finally:
        ring.close()
        rel.close()
        g.clear_filter(0)
        g.unmark()
        g.reset_move()


def test_held_packets_of_an_earlier_move_are_dropped_not_released(tb):
    """An agent that died mid-move leaves its held packets in the gate's FIFO: the next move's
    release path drops them (counted), as a session drops an earlier move's ring records, instead
    of releasing them out of place."""
    nf0 = builder.instance(tb["name"], "nf0")
    info = tb["nodes"]["nf0"]
    g = Gate(nf0)
    rel = Releaser(nf0, info["ns"], info["release_if"], tuple(info["wiring"]))
    before = nf0.stats()
    try:
        g.set_move_cfg(epoch=31, hold=1)
        g.set_filter(0, parse("all"), L.Action.BUFFER, tag=31)
        with rig(tb["name"], 50) as (gen, sink):
            measure(gen, sink, 5000, 0.2, 0.3)
        g.clear_filter(0)
        hs = g.hold_state()
        left = (hs.head - hs.cursor) & 0xFFFFFFFF
        assert left > 500
        g.unmark()
        g.set_move_cfg(epoch=32, drain_epoch=32)          # the next move, held packets still in
        assert rel.release_held() == left
        s = {k: v - before.get(k, 0) for k, v in nf0.stats().items()}
        assert s["r_hold_stale"] == left and s.get("r_released", 0) == 0
        hs = g.hold_state()
        assert hs.head == hs.cursor and hs.max_wait_ns == 0
    finally:
        rel.close()
        g.clear_filter(0)
        g.unmark()
        g.reset_move()


def test_redirect_over_peer_link(tb):
    nf0, nf1 = builder.instance(tb["name"], "nf0"), builder.instance(tb["name"], "nf1")
    slot = tb["nodes"]["nf0"]["peer_slots"]["nf1"]
    Gate(nf0).set_filter(0, parse("all"), L.Action.REDIRECT, peer=slot)
    before0, before1 = nf0.stats(), nf1.stats()
    try:
        with rig(tb["name"], 200) as (gen, sink):
            r = measure(gen, sink, 20000, 1.0, 1.0)
    finally:
        Gate(nf0).clear_filter(0)
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0)
    a, b = nf0.stats(), nf1.stats()
    redirected = a.get("r_redirected", 0) - before0.get("r_redirected", 0)
    assert redirected == r["sent"]
    assert b.get("r_from_peer", 0) - before1.get("r_from_peer", 0) == r["sent"]
    # nf1 translated them: its own mappings for the 200 flows
    assert len([m for m in nf1.mappings() if m["dport"] == 9000]) == 200


def _hold(nf, tb_name: str, tag: int, want: int) -> list:
    """Buffer traffic at nf's gate until `want` packets are held; the traffic then stops."""
    ring = Gate(nf).ring()
    held = []
    try:
        with rig(tb_name, 200) as (gen, sink):
            t, _ = in_thread(measure, gen, sink, 20000, 0.6, 0.2)
            Gate(nf).set_filter(0, parse("all"), L.Action.BUFFER, tag=tag)
            t_end = time.monotonic() + 2.0
            while len(held) < want and time.monotonic() < t_end:
                held += ring.poll(20)
            Gate(nf).clear_filter(0)
            t.join()
        held += ring.poll(50)
    finally:
        ring.close()
    Gate(nf).set_move_cfg(drain_epoch=tag)
    return held


def _xmit(ns: str, ifname: str) -> tuple[int, int]:
    c = IfCounters(ifname, ns)
    try:
        return c.ethtool("tx_queue_0_xdp_xmit", "tx_queue_0_xdp_xmit_errors")
    finally:
        c.close()


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs a CPU to stall and another to release from")
def test_release_waits_for_a_stalled_next_hop(tb):
    """The next hop's ring is not drained while a release runs (its NAPI is held on another
    CPU): a release blind to the ring loses what does not fit (xdp_xmit_errors), the Releaser
    waits for room and loses nothing."""
    nf0 = builder.instance(tb["name"], "nf0")
    info = tb["nodes"]["nf0"]
    out_if = info["wiring"][1]
    sw = tb["nodes"][next(n for n, i in info["ifaces"].items() if i == out_if)]   # the next hop
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    results = {}
    try:
        for tag, egress in ((21, ()), (22, tuple(info["wiring"]))):
            held = _hold(nf0, tb["name"], tag, 1500)
            assert len(held) >= 1000, len(held)
            rel = Releaser(nf0, info["ns"], info["release_if"], egress)
            x0 = _xmit(info["ns"], out_if)
            try:
                with stalled_napi(sw["ns"], sw["ifaces"]["nf0"], cpu=1, seconds=0.4):
                    rel.release(held)
            finally:
                rel.close()
            time.sleep(0.3)
            x1 = _xmit(info["ns"], out_if)
            results[tag] = {"held": len(held), "xmit": x1[0] - x0[0], "errors": x1[1] - x0[1],
                            "waits": rel.ring_waits, "wait_s": rel.ring_wait_s}
            Gate(nf0).unmark()
            Gate(nf0).reset_move()
    finally:
        os.sched_setaffinity(0, mine)
    blind, watched = results[21], results[22]
    print("release under a stalled next hop:", results)
    assert blind["errors"] > 0, results          # the stall is real: a blind release overflows
    assert watched["errors"] == 0 and watched["xmit"] == watched["held"], results
    assert watched["waits"] > 0, results
