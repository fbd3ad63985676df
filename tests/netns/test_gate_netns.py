"""The gate's move actions with real traffic: buffering and release without a packet lost,
duplicated or overtaken; redirect to another instance over the peer link."""
import threading
import time

import pytest

from nfx import layout as L
from nfx.gate import Gate, Releaser
from nfx.filter import parse
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
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
    rel = Releaser(nf0, info["ns"], info["release_if"])
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
    finally:
        ring.close()
        rel.close()
    assert r["sent"] > 80000
    s = nf0.stats()
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), (str(r), str(s), released)
    assert s["r_buffered"] == s["r_released"] == released
    assert s.get("r_buf_ring_full", 0) == 0 and s.get("v_aborted", 0) == 0
    # every mark flipped back to PROCESS once its backlog was out
    assert all(m.action == L.Action.PROCESS and m.buffered == m.released for m in Gate(nf0).marks().values())
    Gate(nf0).unmark()
    Gate(nf0).reset_move()


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
