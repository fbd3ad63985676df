"""Late locking's pacing (nfx/agent/late_locking.py Pace): the next group waits until every chunk
sent so far is acknowledged, and a destination that never acknowledges fails the move."""
import threading
import time

import pytest

from nfx.agent.late_locking import Pace


def test_wait_returns_once_every_sent_chunk_is_acknowledged():
    p = Pace(timeout=2.0)
    sent = list(p.count(["a", "b", "c"]))
    assert sent == ["a", "b", "c"] and p.sent == 3
    p.done({}, ["a"])
    t = threading.Timer(0.05, lambda: p.done({}, ["b", "c"]))
    t.start()
    t0 = time.monotonic()
    p.wait()
    assert time.monotonic() - t0 >= 0.04
    assert p.acked == 3


def test_wait_times_out_when_the_destination_is_silent():
    p = Pace(timeout=0.05)
    list(p.count(["a"]))
    with pytest.raises(TimeoutError, match="did not acknowledge"):
        p.wait()
