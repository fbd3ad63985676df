"""The gate acts on an in-band control packet (IBC) only within its move (nfx issue 9): the
epoch it carries must be the running OP move's (destination) or that of the mark that passes
the flow on (source). Anything else is dropped and counted as r_forged: no ring record, no cut.
BPF_PROG_TEST_RUN on an IDS instance (the gate is the same in every NF)."""
import pytest

from nfx import layout as L
from nfx.frames import ibc_frame
from nfx.flows import make_key
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from nfx.gate import Gate
from nfx.filter import parse
from nfx.nfs.ids import IDS, IdsConfig
from tests.scratch import scratch_nf

XDP_ABORTED, XDP_DROP = 0, 1
KEY = make_key("10.0.1.2", "10.0.2.2", 5000, 53, 17)
E = 4242


@pytest.fixture(scope="module")
def nf():
    with scratch_nf(IDS, "tig", IdsConfig(), max_flows=64) as inst:
        inst.ring = Gate(inst).ring()
        try:
            yield inst
        finally:
            inst.ring.close()


@pytest.fixture(autouse=True)
def fresh(nf):
    for m in ("nfx_stats", "nfx_marks", "nfx_filters"):
        nf.maps[m].clear()
    Gate(nf).reset_move()
    nf.ring.poll(0)
    yield


def ibc(epoch: int) -> bytes:
    return ibc_frame(KEY, bytes.fromhex("020000000aaa"), epoch)


def run(nf, frame):
    with netns.enter(nf.ns):
        v, _, _ = prog_test_run(nf.fn.fd, frame, ingress_ifindex=nf.idx["in"])
    assert v != XDP_ABORTED
    return v


def outcome(nf, frame) -> tuple[int, int, list, list]:
    """(verdict, r_forged added, ring records, ibc_switch) for one IBC from the switch."""
    before = nf.stats().get("r_forged", 0)
    v = run(nf, frame)
    recs = [p for p in nf.ring.poll(0) if p.kind == L.BufKind.IBC]
    return v, nf.stats().get("r_forged", 0) - before, recs, list(Gate(nf).move_state().ibc_switch)


def dst_in_move(nf, op=1, epoch=E):
    Gate(nf).set_move_cfg(epoch=epoch, op=op)
    Gate(nf).mark([KEY], L.Action.BUFFER, epoch=epoch)


def test_no_move_ibc_is_dropped_unrecorded(nf):
    v, forged, recs, cut = outcome(nf, ibc(E))
    assert (v, forged, recs, cut) == (XDP_DROP, 1, [], [0, 0])


def test_dst_takes_the_ibc_of_its_op_move(nf):
    dst_in_move(nf)
    v, forged, recs, cut = outcome(nf, ibc(E))
    assert v == XDP_DROP and forged == 0 and cut == [1, 0]
    assert len(recs) == 1 and recs[0].epoch == E


@pytest.mark.parametrize("what", ["other epoch", "zero epoch", "not op"])
def test_dst_drops_ibcs_not_of_its_op_move(nf, what):
    dst_in_move(nf, op=0 if what == "not op" else 1)
    sent = {"other epoch": E + 1, "zero epoch": 0, "not op": E}[what]
    v, forged, recs, cut = outcome(nf, ibc(sent))
    assert (v, forged, recs, cut) == (XDP_DROP, 1, [], [0, 0])


@pytest.mark.parametrize("action", [L.Action.TO_CTRL, L.Action.REDIRECT])
def test_src_passes_on_only_the_ibc_of_its_marks_epoch(nf, action):
    Gate(nf).mark([KEY], action, epoch=E, peer=2)
    before = nf.stats()
    v, forged, recs, cut = outcome(nf, ibc(E + 7))
    assert (forged, recs, cut) == (1, [], [0, 0])
    assert nf.stats().get("r_redirected", 0) == before.get("r_redirected", 0)
    v, forged, recs, cut = outcome(nf, ibc(E))
    assert forged == 0 and cut == [0, 0]
    if action == L.Action.TO_CTRL:
        assert len(recs) == 1 and recs[0].epoch == E
    else:
        assert recs == [] and nf.stats().get("r_redirected", 0) == before.get("r_redirected", 0) + 1


def test_src_filter_tag_is_the_epoch_for_new_flows(nf):
    Gate(nf).set_filter(0, parse("proto=udp"), L.Action.TO_CTRL, tag=E)
    assert outcome(nf, ibc(E + 1))[1:3] == (1, [])
    v, forged, recs, _ = outcome(nf, ibc(E))
    assert forged == 0 and len(recs) == 1


# ---- SLiM's source (nfx/agent/slim_source.py): its IBC is its cut ----------------------------------
def data(sport: int = 5000) -> bytes:
    from scapy.all import IP, UDP, Ether, raw
    return raw(Ether(src="02:00:00:00:0a:aa", dst="02:00:00:00:0b:bb") / IP(src="10.0.1.2", dst="10.0.2.2") /
               UDP(sport=sport, dport=53) / (b"x" * 32))


def slim_source(nf, how: str, op: int = 1):
    g = Gate(nf)
    g.set_move_cfg(epoch=E, op=op)
    if how == "mark":
        g.mark([KEY], L.Action.STATELET, epoch=E)
    else:
        g.set_filter(0, parse("proto=udp"), L.Action.STATELET, tag=E)


def seen(nf, frame) -> tuple[int, int, int]:
    """(verdict, statelet records written, packets dropped as the other path's) for one packet."""
    before = nf.stats()
    v = run(nf, frame)
    after = nf.stats()
    return (v, after.get("r_statelet", 0) - before.get("r_statelet", 0),
            after.get("r_op_pre_ibc", 0) - before.get("r_op_pre_ibc", 0))


@pytest.mark.parametrize("how", ["mark", "filter"])
def test_slim_source_mirrors_until_its_ibc_then_drops(nf, how):
    """Before this side's IBC a marked (or filtered) flow is processed and mirrored; the IBC is
    recorded as the cut; after it the flow's packets are the destination's copies: dropped,
    counted, not mirrored. The other side is not cut yet."""
    slim_source(nf, how)
    v, st, pre = seen(nf, data())
    assert v != XDP_DROP and (st, pre) == (1, 0)
    v, forged, recs, cut = outcome(nf, ibc(E))
    assert forged == 0 and cut == [1, 0] and len(recs) == 1
    assert seen(nf, data()) == (XDP_DROP, 0, 1)
    v, st, pre = seen(nf, data(5001))          # another flow: the filter's (cut too) or no move's
    if how == "filter":
        assert (v, st, pre) == (XDP_DROP, 0, 1)
    else:
        assert v != XDP_DROP and (st, pre) == (0, 0)


def test_slim_source_without_a_cut_keeps_processing(nf):
    """ng: no move config of its own, so no IBC counts and the flow is never cut."""
    slim_source(nf, "mark", op=0)
    assert outcome(nf, ibc(E))[1] == 1                      # forged: not this instance's cut
    v, st, pre = seen(nf, data())
    assert v != XDP_DROP and (st, pre) == (1, 0)
