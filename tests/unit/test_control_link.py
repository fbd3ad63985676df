"""The emulated control link: frames are pipelined through the delay (not one delay each), the
rate spaces them by size, order is kept; and OpenNF's controller buffer hands packets over in
the order it let them go, off the thread that feeds it."""
import socket
import time
from contextlib import contextmanager

import pytest

from nfx import layout as L
from nfx.agent.link import DelayedConn, Link
from nfx.packets import Packet
from nfx.migrate.ctrlbuf import ControllerBuffer
from nfx.state import wire


def test_link_fifo_delay_and_rate():
    lk = Link(0.010, 8e6)                      # 10 ms, 1 MB/s
    t = 100.0
    assert lk.due(1000, t) == pytest.approx(t + 0.001 + 0.010)
    # a second frame entering at the same time waits for the first to be on the wire
    assert lk.due(1000, t) == pytest.approx(t + 0.002 + 0.010)
    # one entering after the link went idle does not
    assert lk.due(0, t + 1) == pytest.approx(t + 1.010)
    with pytest.raises(ValueError):
        Link(-1)


@contextmanager
def _pair(delay_s, rate_bps=0.0):
    """A DelayedConn and the raw socket at its far end, both closed afterwards."""
    a, b = socket.socketpair()
    conn = DelayedConn(a, Link(delay_s, rate_bps), Link(delay_s, rate_bps))
    try:
        yield conn, b
    finally:
        conn.close()
        b.close()


def test_frames_are_pipelined_through_the_delay():
    with _pair(0.05) as (conn, far):
        t0 = time.monotonic()
        for i in range(20):                    # the far end sends 20 frames back to back
            wire.write(far, wire.encode_json({"i": i}))
        got = [conn.frame(5) for _ in range(20)]
        took = time.monotonic() - t0
        assert [o["i"] for _, o in got] == list(range(20))
        # one delay for all of them (a per-frame delay would take a second)
        assert 0.045 <= took < 0.4, took


def test_writes_leave_one_delay_later_without_blocking():
    with _pair(0.05) as (conn, far):
        t0 = time.monotonic()
        for i in range(10):
            conn.write(wire.encode_json({"i": i}))
        assert time.monotonic() - t0 < 0.02     # write() does not wait for the link
        r = wire.Reader(far)
        seen = [r.frame()[1]["i"] for _ in range(10)]
        assert seen == list(range(10))
        assert 0.045 <= time.monotonic() - t0 < 0.4


def test_rate_spaces_frames_by_size():
    with _pair(0.0, 8e6) as (conn, far):      # 1 MB/s
        blob = {"x": "a" * 50_000}
        t0 = time.monotonic()
        for _ in range(4):
            wire.write(far, wire.encode_json(blob))
        for _ in range(4):
            conn.frame(5)
        assert time.monotonic() - t0 >= 0.19   # 200 kB at 1 MB/s


def test_frame_times_out_and_reports_a_closed_peer():
    import queue
    with _pair(0.0) as (conn, far):
        with pytest.raises(queue.Empty):
            conn.frame(0.05)
        far.close()
        assert conn.frame(1) is None           # EOF


class SlowDst:
    """A destination whose packet-outs take a control round trip each."""

    def __init__(self):
        self.got: list[int] = []
        self.calls = 0

    def inject(self, pkts):
        self.calls += 1
        time.sleep(0.02)
        self.got += [int.from_bytes(p.data, "big") for p in pkts]
        return len(pkts)


def _pkts(lo, hi, side=L.SIDE_IN):
    return [Packet(i.to_bytes(4, "big"), side, key=b"k%d" % (i % 7), ts_ns=time.monotonic_ns()) for i in range(lo, hi)]


def test_controller_buffer_hands_over_in_order_off_the_feeding_thread():
    cb = ControllerBuffer(op=False)
    dst = SlowDst()
    try:
        cb.take(_pkts(0, 100))
        cb.release(dst)
        t0 = time.monotonic()
        for i in range(100, 1000, 50):         # the stream keeps feeding while packet-outs are slow
            cb.take(_pkts(i, i + 50))
        assert time.monotonic() - t0 < 0.05    # take() never waits for a packet-out
        cb.flush(5)
        assert dst.got == list(range(1000))
        assert dst.calls < 19                  # what waited went in one request
        assert cb.injected == 1000 and cb.peak >= 100
    finally:
        cb.stop()


def test_controller_buffer_early_release_keeps_each_flows_order():
    cb = ControllerBuffer(op=False)
    dst = SlowDst()
    try:
        cb.take(_pkts(0, 70))
        cb.release(dst, [b"k1", b"k2"])
        cb.take(_pkts(70, 140))
        cb.release(dst)
        cb.flush(5)
        assert sorted(dst.got) == list(range(140))
        for k in range(7):
            mine = [i for i in dst.got if i % 7 == k]
            assert mine == sorted(mine)
    finally:
        cb.stop()


def test_controller_buffer_take_back_returns_what_was_not_handed_over():
    cb = ControllerBuffer(op=False)
    try:
        cb.take(_pkts(0, 10))
        back = cb.take_back()
        assert [int.from_bytes(p.data, "big") for p in back] == list(range(10))
        cb.take(_pkts(10, 12))                 # nothing goes anywhere after a take-back
        cb.flush(1)
        assert cb.injected == 0
    finally:
        cb.stop()
