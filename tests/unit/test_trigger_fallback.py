"""dt after the source's "done": the armed rules are made plain once both switches took the
trigger, and the controller steers itself when a trigger never arrived."""
import time

import pytest

from nfx import movespec
from nfx.migrate import dist
from nfx.migrate.mechanism import Ctx
from nfx.movespec import MoveRequest
from nfx.filter import parse


class FakeSteer:
    def __init__(self, fired):
        self._fired, self.calls, self.applied_at = fired, [], 0.0

    def fired(self, token):
        return list(self._fired)

    def point(self, flt, nfs, keys):
        self.calls.append(("point", nfs))
        self.applied_at = time.perf_counter()

    def settle(self, flt, nfs, token):
        self.calls.append(("settle", nfs, token))

    def forget_token(self, token):
        self.calls.append(("forget", token))


class Dst:
    name = "nf1"


def ctx(steer, token=42, said=None):
    req = MoveRequest("nf0", "nf1", parse("all"), ("per-flow",), guarantee="lf", mechanism="dist")
    x = Ctx(req, None, Dst, steer, progress=(said.append if said is not None else lambda m: None))
    x.token = token
    return x


def test_fired_everywhere_settles_and_dates_the_switch():
    s = FakeSteer([])
    x = ctx(s)
    armed, fired = x.t0 + 0.010, [x.t0 + 0.012, x.t0 + 0.013]
    s._fired = fired
    r = dist._fired(x, armed, x.t0 + 0.0119)
    assert r["fired"] is True and r["fired_ms"] == [12.0, 13.0] and r["armed_ms"] == 10.0
    assert x.switched_at == fired[1]                  # the slower switch, after the arming
    assert s.calls == [("settle", ["nf1"], 42)]


def test_armed_after_the_trigger_counts_from_the_arming():
    s = FakeSteer([])
    x = ctx(s)
    s._fired = [x.t0 + 0.005, x.t0 + 0.006]
    dist._fired(x, x.t0 + 0.020, None)
    assert x.switched_at == x.t0 + 0.020


def test_a_trigger_that_never_came_leaves_it_to_the_controller(monkeypatch):
    monkeypatch.setattr(movespec, "FIRE_WAIT_S", 0.05)
    said = []
    s = FakeSteer([])
    x = ctx(s, said=said)
    s._fired = [x.t0 + 0.01, None]
    r = dist._fired(x, x.t0 + 0.01, x.t0 + 0.009)
    assert r["fired"] is False and x.switched_at == 0.0
    assert s.calls == [("point", ["nf1"]), ("forget", 42)]
    assert s.applied_at > 0 and any("controller steers" in m for m in said)


@pytest.mark.parametrize("mech,g,flt", [("opennf", "lf", "all"), ("dist", "op", "all"), ("dist", "lf", "sport=1024")])
def test_dt_refused_where_it_cannot_work(mech, g, flt):
    from nfx.errors import BadInput
    with pytest.raises(BadInput, match="dt"):
        MoveRequest("a", "b", parse(flt), ("per-flow",), guarantee=g, opts={"dt"}, mechanism=mech)
