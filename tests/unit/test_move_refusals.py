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


def _full_sharp(band_rules: int):
    """The sharp testbed's steering on in-memory switches, with `band_rules` move rules of other
    prefixes on the inside switch (2 defaults beside them)."""
    from nfx.control.controller import DelayedSteering
    from nfx.control.steer import Steering
    from nfx.control.switch import Match, Rule
    from tests.unit.test_steering_prios import sharp
    rec, sw = sharp()
    steer = Steering.over(rec, sw)
    for i in range(band_rules):
        steer.add_wild("si", Match(in_port="h1", src=f"10.9.{i}.0/24"), Rule(output=["nf1"]), 900 - i)
    return DelayedSteering(steer, 0.0), sw


@pytest.mark.parametrize("guarantee, opts, free, refused", [
    ("op", (), 1, True),         # no rule of its own: two points, one more rule for a moment
    ("op", (), 2, False),
    ("lf", (), 1, True),         # its rollback would point once more
    ("ng", ("dt",), 1, True),    # armed rules beside the ones in force
])
def test_refused_when_the_switches_lack_wildcard_slots(guarantee, opts, free, refused):
    from nfx import layout as L
    dsteer, sw = _full_sharp(L.SW_MAX_WILD - 2 - free)
    before = {n: list(s.slots) for n, s in sw.items()}
    flt = parse("all" if "dt" in opts else "src=10.0.1.0/29")
    req = MoveRequest("nf0", "nf1", flt, ("per-flow",), guarantee=guarantee, mechanism="dist",
                      opts=frozenset(opts), timeout=5.0)
    src = Untouchable(name="nf0", shares=False, cluster=None, spread=False, queues=1)
    if refused:
        with pytest.raises(BadInput, match="not enough wildcard slots") as e:
            move(req, src, Untouchable(name="nf1"), dsteer)
        assert "switch si has" in str(e.value) and e.value.hint
        assert {n: list(s.slots) for n, s in sw.items()} == before        # nothing changed
    else:
        # past the check: the source is the first thing asked
        with pytest.raises(AssertionError, match="the refused move used"):
            move(req, src, Untouchable(name="nf1"), dsteer)


def test_a_filter_with_its_own_rule_needs_one_slot():
    from nfx import layout as L
    from nfx.control import steer_slots
    dsteer, sw = _full_sharp(L.SW_MAX_WILD - 3)
    flt = parse("src=10.9.0.0/24")                     # moved before: its rule is in force
    assert steer_slots.wild_needed(dsteer.s, flt) == {"si": 1, "so": 0}
    assert steer_slots.wild_needed(dsteer.s, parse("src=10.8.0.0/24")) == {"si": 2, "so": 0}
    assert steer_slots.wild_needed(dsteer.s, parse("all")) == {"si": 2, "so": 2}
    assert dsteer.check_room(flt) == {"si": 1, "so": 0}
    st = steer_slots.slots(dsteer.s)
    assert st["si"]["wild_used"] == L.SW_MAX_WILD - 1 and st["si"]["side"] == "in"
    assert st["si"]["moves"][0]["src"] == "10.9.12.0/24" and st["si"]["moves"][0]["to"] == ["nf1"]
    assert st["si"]["defaults"][0]["to"] == ["nf0"] and st["si"]["defaults"][0]["from_host"]
