"""The order of DiST's steps as the controller runs them (nfx.migrate.dist.Dist.run), against
endpoints and switches that log what they are asked: the paper's order (enableEvent's ack, then
MovePerFlow, its ack, then the switches) and nfx's overlap (ov: the switches on the ack of the
hold, before the state is in). Plus the options' validation and the IBC a filter makes."""
import socket

import pytest

from nfx import layout as L
from nfx.errors import BadInput
from nfx import movespec as S
from nfx.migrate.dist import Dist
from nfx.migrate.mechanism import Ctx
from nfx.movespec import MoveRequest
from nfx.filter import parse


class Log(list):
    pass


class Run:
    def __init__(self, log):
        self.log = log

    def held(self):
        self.log.append("held")
        return {"flows": 2, "ibc": [(0, L.FlowKey()), (1, L.FlowKey())], "outside": []}

    def go(self):
        self.log.append("go")

    def done(self):
        self.log.append("done")
        return {"chunks": 1, "bytes": 10, "total_s": 0.0, "held_s": 0.0}

    def close(self):
        pass


class Src:
    name = "nf0"

    def __init__(self, log):
        self.log = log

    def move_dist(self, dst, epoch, guarantee, opts, flt, scopes, timeout, fire=0, data_link=(0, 0), cluster_inside=False):
        self.log.append(("request", guarantee, tuple(sorted(opts)), data_link))
        return Run(self.log)


class Dst:
    name = "nf1"


class Steer:
    applied_at = 0.0

    def __init__(self, log):
        self.log = log

    def point(self, flt, nfs, outside, keys=None):
        self.log.append(("point", tuple(nfs)))

    def ibcs(self, cuts, epoch):
        self.log += [("ibc", side) for side, _ in cuts]


def run(log, guarantee, opts):
    req = MoveRequest("nf0", "nf1", parse("all"), ("per-flow",), guarantee=guarantee, mechanism="dist",
                      opts=frozenset(opts), timeout=5.0, data_link=(1.0, 100.0))
    Dist().run(Ctx(req, Src(log), Dst(), Steer(log), 7))


def steps(guarantee, opts):
    log = Log()
    run(log, guarantee, opts)
    return [s if isinstance(s, str) else s[:2] for s in log]


def test_lf_as_published():
    assert steps("lf", []) == [("request", "lf"), "held", "go", "done", ("point", ("nf1",))]


def test_op_as_published():
    assert steps("op", ["pz"]) == [("request", "op"), "held", "go", "done", ("point", ("nf0", "nf1")),
                                    ("ibc", 0), ("ibc", 1), ("point", ("nf1",))]


def test_ng_is_moveperflow_alone():
    assert steps("ng", []) == [("request", "ng"), "held", "done", ("point", ("nf1",))]


def test_overlap_steers_on_the_hold():
    s = steps("lf", ["ov"])
    # no MovePerFlow of its own; the steering starts on its own thread at "held" (not after "done")
    assert "go" not in s and s[:2] == [("request", "lf"), "held"] and s.count(("point", ("nf1",))) == 1


def test_op_overlap_duplicates_before_the_state():
    s = steps("op", ["ov"])
    assert "go" not in s
    assert s.index(("point", ("nf0", "nf1"))) > s.index("held")
    assert s.index(("ibc", 0)) > s.index("done")       # the cut still waits for the state


def test_the_data_link_reaches_the_source():
    log = Log()
    run(log, "lf", set())
    assert log[0][3] == (1.0, 100.0)


@pytest.mark.parametrize("guarantee,mechanism,opts,what", [
    ("ng", "dist", {"ov"}, "ov"), ("lf", "opennf", {"ov"}, "ov"), ("op", "dist", {"dt"}, "dt")])
def test_options_refused_where_they_do_not_apply(guarantee, mechanism, opts, what):
    with pytest.raises(BadInput, match=what):
        MoveRequest("nf0", "nf1", parse("all"), ("per-flow",), guarantee=guarantee, opts=opts, mechanism=mechanism)


def test_parse_opts_and_data_link():
    assert S.parse_opts("pz|ov,dt") == {"pz", "ov", "dt"}
    with pytest.raises(BadInput, match="ov"):
        S.parse_opts("zz")
    assert S.parse_data_link({"data_delay_ms": 1, "data_rate_mbit": "100"}) == (1.0, 100.0)
    with pytest.raises(BadInput):
        S.parse_data_link({"data_delay_ms": -1})


def test_ibc_made_from_the_filter_matches_it():
    f = parse("proto=udp src=10.0.1.0/24 dport=9000")
    (s_in, k), (s_out, r) = S.ibc_synthetic(f)
    assert (s_in, s_out) == (L.SIDE_IN, L.SIDE_OUT)
    assert k.proto == 17 and (k.saddr & f.src[1]) == f.src[0] and socket.ntohs(k.dport) == 9000
    assert (r.saddr, r.daddr, r.sport, r.dport) == (k.daddr, k.saddr, k.dport, k.sport)
    # no flow at all: the cut comes from the filter; flows only outside: the same
    def raw(pairs):
        return [(side, bytes(key)) for side, key in pairs]
    assert raw(S.ibc_keys([], [], f)) == raw(S.ibc_synthetic(f))
    assert raw(S.ibc_keys([k], [k], parse("all"))) == raw(S.ibc_synthetic(parse("all")))
