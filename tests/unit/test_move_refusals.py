"""Moves a testbed cannot carry out are refused before anything changes, with the reason: on
spreading switches only the mechanisms that steer by key; on multi-queue veths no
order-preserving move (its in-band cut orders one FIFO, each queue is one)."""
from types import SimpleNamespace

import pytest

from nfx.errors import BadInput
from nfx.filter import parse
from nfx.migrate.mechanism import move
from nfx.movespec import MoveRequest


class Untouchable(SimpleNamespace):
    """An endpoint that fails the test if the move asks it for anything."""
    def __getattr__(self, name):
        raise AssertionError(f"the refused move used {name}")


@pytest.mark.parametrize("mechanism, guarantee, opts, where, why", [
    ("slim", "lf", (), dict(spread=True), "spread the flows"),
    ("dist", "lf", ("dt",), dict(spread=True), "with dt"),
    ("opennf", "op", (), dict(queues=2), "2 queues"),
    ("dist", "op", (), dict(queues=4), "4 queues"),
])
def test_refused(mechanism, guarantee, opts, where, why):
    s = Untouchable(name="nf0", shares=False, cluster=None, **{"spread": False, "queues": 1, **where})
    req = MoveRequest("nf0", "nf1", parse("all"), ("per-flow",), guarantee=guarantee, mechanism=mechanism,
                      opts=frozenset(opts), timeout=5.0)
    with pytest.raises(BadInput, match=why):
        move(req, s, Untouchable(name="nf1"), Untouchable())
