"""The gate's hold FIFO (bpf/include/nfx_hold.h) on a real NAT program: with move_cfg.hold a held
packet goes into the next slot, committed with its sequence number and its bytes, never into the
buffer ring; a full FIFO drops and counts, and the mark's count stays exact."""
import pytest
from scapy.all import Ether, IP, UDP, raw

from nfx import layout as L
from nfx.flows import make_key
from nfx.gate import Gate
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from nfx.nfs.nat import NAT, NatConfig
from tests.scratch import scratch_nf

XDP_DROP = 1
H1, H2 = "10.0.1.2", "10.0.2.2"
SLOTS = 4


@pytest.fixture(scope="module")
def nf():
    with scratch_nf(NAT, "hld", NatConfig(), max_flows=1024, defines={"NFX_HOLD_SLOTS": SLOTS}) as inst:
        yield inst


def frame(sport: int, pad: int = 0) -> bytes:
    return raw(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src=H1, dst=H2) /
               UDP(sport=sport, dport=53) / bytes(pad))


def run(nf, data: bytes) -> int:
    with netns.enter(nf.ns):
        return prog_test_run(nf.fn.fd, data, ingress_ifindex=nf.idx["in"])[0]


def test_held_in_slots_in_order_until_full(nf):
    g = Gate(nf)
    key = make_key(H1, H2, 1000, 53, "udp")
    g.set_move_cfg(epoch=5, hold=1)
    g.mark([key], L.Action.BUFFER, epoch=5)
    ring = g.ring()
    head0 = g.hold_state().head
    sent = [frame(1000, pad=i) for i in range(SLOTS + 2)]
    assert [run(nf, f) for f in sent] == [XDP_DROP] * len(sent)
    hs = g.hold_state()
    s = nf.stats()
    # the first SLOTS wait in the FIFO, the rest found it full
    assert ((hs.head - head0) & 0xFFFFFFFF, hs.peak, hs.epoch) == (SLOTS, SLOTS, 5)
    assert (s.get("r_buffered", 0), s.get("r_hold_full", 0), s.get("r_buf_ring_full", 0)) == (SLOTS, 2, 0)
    for i in range(SLOTS):
        at = head0 + i
        slot = nf.maps.nfx_hold.get(L.u32(at % SLOTS))
        assert slot.seq == at + 1 and slot.rx == L.RX_RELEASED and slot.side == L.SIDE_IN
        assert bytes(slot.data[:slot.len]) == sent[i]           # committed with its own bytes
    assert g.marks()[bytes(key)].buffered == SLOTS             # the dropped ones were not counted
    assert ring.poll(0) == []                                   # none went to the agent
    g.set_move_cfg(hold=0)
