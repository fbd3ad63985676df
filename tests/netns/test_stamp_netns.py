"""The stamper end to end on the sharp testbed (h1 -> si -> nf0 -> so -> h2): with si stamping,
every packet reaches nf0 with its flow's count as a trailer, nf0 takes it off, and h2's sink sees
the bytes h1 sent: nothing lost, no frame longer than its datagram, no payload changed, at the
smallest frame size and at full size (the builder gives switch-NF links room for the trailer).
Moves under stamped traffic: what the gates hold, buffer or pass to the peer keeps its trailer
until an instance processes it, and none reaches h2."""
import pytest

from nfx.control.switch import Switch
from nfx.procs import controller
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import Rigs, running_testbed, under_traffic

FLOWS, RATE, DURATION = 50, 20000, 1.0
RIGS = Rigs()


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2) as rec:
        [si] = [s for s in rec.switches() if s.name == "si"]
        sw = Switch.open("si", si.ns, si.pin)
        try:
            yield rec, sw
        finally:
            sw.set_stamp(False)
            sw.close()
            RIGS.close()


def stamp_stats(name, inst) -> dict:
    st = builder.instance(name, inst).stats()
    return {k: st.get(k, 0) for k in ("r_stamped", "r_stamp_kept", "r_stamp_lost", "r_stamp_trim_fail")}


def test_stamped_traffic_arrives_as_sent_and_the_nf_counts_each_stamp(tb):
    rec, sw = tb
    name = rec["name"]
    sw.set_stamp(True)
    nf0 = builder.instance(name, "nf0")
    before = nf0.stats()
    with rig(name, FLOWS) as (gen, sink):          # rigs of its own: one sink per host at a time
        r = measure(gen, sink, RATE, DURATION)
    sent = r["sent"]
    assert sent > 0
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0), r
    assert (r["bad_len"], r["bad_payload"]) == (0, 0), r
    assert r["clean"], r
    st = nf0.stats()

    def d(k):
        return st.get(k, 0) - before.get(k, 0)
    assert d("r_stamped") == sent, st
    assert (d("r_stamp_kept"), d("r_stamp_lost"), d("r_stamp_trim_fail")) == (0, 0, 0)
    counts = sw.stamp_counts()
    assert len(counts) == FLOWS and sum(counts.values()) == sent
    assert sw.stats().get("r_sw_stamped", 0) == sent
    # full-size frames too: the testbed's switch-NF links fit the trailer
    with rig(name, FLOWS, size=1514) as (gen, sink):
        big = measure(gen, sink, RATE // 4, 0.5)
    assert big["clean"] and big["sent"] > 0, big
    assert nf0.stats().get("r_stamped", 0) - before.get("r_stamped", 0) == sent + big["sent"]
    assert sw.stats().get("r_sw_stamp_too_big", 0) == 0
    sent += big["sent"]
    # with the stamper off, nothing more is stamped
    sw.set_stamp(False)
    with rig(name, FLOWS) as (gen, sink):
        r2 = measure(gen, sink, RATE, 0.3)
    assert r2["clean"] and nf0.stats().get("r_stamped", 0) - before.get("r_stamped", 0) == sent


# dist and opennf under stamped traffic: tests/netns/test_cluster_netns.py (its moves run stamped)
MOVES = [("slim", "lf")]


@pytest.mark.parametrize("mechanism,guarantee", MOVES, ids=[f"{m}-{g}" for m, g in MOVES])
def test_a_move_under_stamped_traffic_leaks_no_trailer(tb, mechanism, guarantee):
    rec, sw = tb
    name = rec["name"]
    sw.set_stamp(True)
    measure(*RIGS.get(name, FLOWS), RATE, 0.3)              # every flow has its state somewhere
    src = "nf0" if builder.instance(name, "nf0").mappings() else "nf1"
    dst = "nf1" if src == "nf0" else "nf0"
    before = {i: stamp_stats(name, i) for i in (src, dst)}
    gen, sink = RIGS.get(name, FLOWS)
    m, r = under_traffic(name, gen, sink, RATE, 1.5, 0.6, lambda: controller.call(
        name, "POST", "/move", {"src": src, "dst": dst, "guarantee": guarantee, "mechanism": mechanism}),
        judged=lambda r, m: not (r["lost"] or r["duplicated"] or r["bad_len"]), what="move")
    assert (r["lost"], r["duplicated"], r["unexpected"]) == (0, 0, 0), (m, r)
    if guarantee == "op":
        assert r["reordered"] == 0, r
    assert (r["bad_len"], r["bad_payload"]) == (0, 0), r
    after = {i: stamp_stats(name, i) for i in (src, dst)}
    d = {i: {k: after[i][k] - before[i][k] for k in after[i]} for i in (src, dst)}
    # every packet came stamped and was processed once; what waited was stamped again, not lost
    assert d[src]["r_stamped"] + d[dst]["r_stamped"] >= r["sent"], d
    assert all(d[i]["r_stamp_lost"] == d[i]["r_stamp_trim_fail"] == 0 for i in d), d
    if mechanism != "slim":       # a SLiM source passes nothing on; its destination may hold none
        assert d[src]["r_stamp_kept"] + d[dst]["r_stamp_kept"] > 0, d     # the move held or passed some on
