"""dt after the source's "done": the armed rules are made plain once both switches took the
trigger, and the controller steers itself when a trigger never arrived."""
import time

import pytest

from nfx.migrate import mechanisms as M
from nfx.state.filter import parse


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


def ctx(token=42):
    x = M.Ctx()
    x.token = token
    return x


def test_fired_everywhere_settles_and_dates_the_switch():
    x = ctx()
    armed, fired = x.t0 + 0.010, [x.t0 + 0.012, x.t0 + 0.013]
    s = FakeSteer(fired)
    r = M._fired(s, parse("all"), Dst, x, armed, x.t0 + 0.0119, lambda m: None)
    assert r["fired"] is True and r["fired_ms"] == [12.0, 13.0] and r["armed_ms"] == 10.0
    assert x.switched_at == fired[1]                  # the slower switch, after the arming
    assert s.calls == [("settle", ["nf1"], 42)]


def test_armed_after_the_trigger_counts_from_the_arming():
    x = ctx()
    s = FakeSteer([x.t0 + 0.005, x.t0 + 0.006])
    M._fired(s, parse("all"), Dst, x, x.t0 + 0.020, None, lambda m: None)
    assert x.switched_at == x.t0 + 0.020


def test_a_trigger_that_never_came_leaves_it_to_the_controller(monkeypatch):
    monkeypatch.setattr(M, "FIRE_WAIT_S", 0.05)
    x = ctx()
    s = FakeSteer([x.t0 + 0.01, None])
    said = []
    r = M._fired(s, parse("all"), Dst, x, x.t0 + 0.01, x.t0 + 0.009, said.append)
    assert r["fired"] is False and x.switched_at == 0.0
    assert s.calls == [("point", ["nf1"]), ("forget", 42)]
    assert s.applied_at > 0 and any("controller steers" in m for m in said)


@pytest.mark.parametrize("mech,g,flt", [("opennf", "lf", "all"), ("dist", "op", "all"), ("dist", "lf", "sport=1024")])
def test_dt_refused_where_it_cannot_work(mech, g, flt):
    from nfx.errors import BadInput
    with pytest.raises(BadInput, match="dt"):
        M.move(type("E", (), {"name": "a"})(), type("E", (), {"name": "b"})(), None, parse(flt),
               guarantee=g, opts={"dt"}, mechanism=mech)
