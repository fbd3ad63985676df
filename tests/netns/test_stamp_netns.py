"""The stamper end to end on the sharp testbed (h1 -> si -> nf0 -> so -> h2): with si stamping,
every packet reaches nf0 with its flow's count as a trailer, nf0 takes it off, and h2's sink sees
the bytes h1 sent: nothing lost, no frame longer than its datagram, no payload changed, at the
smallest frame size and at full size (the builder gives switch-NF links room for the trailer).
Moves under stamped traffic run in tests/netns/test_cluster_netns.py (dist and opennf); that a
held, buffered or redirected packet keeps its trailer until processed, in tests/bpf/test_stamp_nf.py."""
import pytest

from nfx.control.switch import Switch
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import Rigs, running_testbed

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
