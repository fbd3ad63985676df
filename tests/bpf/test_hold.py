"""The gate's hold FIFO (bpf/include/nfx_hold.h) on a real NAT program: with move_cfg.hold a held
packet goes into the next slot, committed with its sequence number, its move and its bytes, not
into the buffer ring; once the FIFO is full the move's packets spill to the ring, every later one
of the move too (so they are released after the FIFO's, in order), and nothing is lost."""
import threading
import time

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


def test_held_in_slots_in_order_then_spilled_to_the_ring(nf):
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
    # the first SLOTS wait in the FIFO, the rest went to the ring
    assert ((hs.head - head0) & 0xFFFFFFFF, hs.peak, hs.epoch, hs.spilled) == (SLOTS, SLOTS, 5, 2)
    assert (s.get("r_buffered", 0), s.get("r_hold_spilled", 0), s.get("r_buf_ring_full", 0)) == (SLOTS + 2, 2, 0)
    for i in range(SLOTS):
        at = head0 + i
        slot = nf.maps.nfx_hold.get(L.u32(at % SLOTS))
        assert (slot.seq, slot.epoch, slot.rx, slot.side) == (at + 1, 5, L.RX_RELEASED, L.SIDE_IN)
        assert bytes(slot.data[:slot.len]) == sent[i]           # committed with its own bytes
    assert g.marks()[bytes(key)].buffered == SLOTS + 2
    assert [p.data for p in ring.poll(0)] == sent[SLOTS:]        # the rest, in order, in the ring
    # the move keeps spilling, even with room (the FIFO emptied here by hand, as a release
    # would): nothing of it may overtake what the ring holds
    st = g.hold_state()
    st.cursor = st.head
    nf.maps.nfx_hold_state.put(L.u32(0), st)
    assert run(nf, frame(1000, pad=99)) == XDP_DROP
    assert (g.hold_state().spilled, g.hold_state().head) == (3, st.head)
    assert [p.data for p in ring.poll(0)] == [frame(1000, pad=99)]
    g.set_move_cfg(hold=0)


def test_a_wait_on_the_ring_ends_when_woken(nf):
    """RingReader.wake (a drain's request to the ring's consumer): a poll waiting on an empty
    ring returns when another thread wakes it, not at its timeout; the wake-up is read, so the
    next poll waits again."""
    ring = Gate(nf).ring()
    ring.poll_raw(0)
    took = []

    def waiter():
        t0 = time.monotonic()
        ring.poll_raw(2000)
        took.append(time.monotonic() - t0)
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    ring.wake()
    t.join(5)
    assert took and took[0] < 0.5, took
    t0 = time.monotonic()
    assert ring.poll_raw(100) == []
    assert time.monotonic() - t0 >= 0.09         # waited its timeout: nothing left to wake it
