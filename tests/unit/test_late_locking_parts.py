"""Late locking's parts (nfx/agent/late_locking.py): pacing (pc) waits until every chunk sent so
far is acknowledged, and a destination that never acknowledges fails the move; a group is read
key by key only where that costs less than walking the tables."""
import threading
import time
from types import SimpleNamespace

import pytest

from nfx import layout as L
from nfx.agent import late_locking as LL
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


def _nat(max_entries: int):
    m = SimpleNamespace(Key=L.FlowKey, max_entries=max_entries)
    return SimpleNamespace(kind="nat", maps={"nat_fwd": m, "nat_rev": m})


def test_a_group_is_read_by_keys_only_where_that_is_cheaper():
    reads = {"nat_fwd": bytes(16 * 160), "nat_rev": bytes(16 * 160)}      # pc's group: 320 lookups
    assert LL._by_keys(_nat(262144), reads)                                 # 524k buckets to walk
    assert LL._by_keys(_nat(65536), reads)
    assert not LL._by_keys(_nat(1024), reads)                               # a small table: walk it
    big = {"nat_fwd": bytes(16 * 512), "nat_rev": bytes(16 * 512)}          # as published: 1024
    assert not LL._by_keys(_nat(65536), big) and LL._by_keys(_nat(262144), big)
