"""A move's record (movespec.MoveMetrics): to_dict keeps the move log's keys and their order
(the bench, the API and the log read them), from_dict reads a reply back for the CLI's table,
and a registered mechanism is one a request may name."""
import pytest

from nfx.errors import BadInput
from nfx.migrate import MECHANISMS, mechanism
from nfx.movespec import MoveMetrics, MoveRequest
from nfx.filter import parse

HEAD = ["mechanism", "guarantee", "opts", "src", "dst", "filter", "scopes", "epoch", "data_delay_ms",
        "data_rate_mbit", "phases_ms", "state_chunks", "state_bytes", "transfer_s"]
TAIL = ["flows", "move_time_s", "redirect_time_s", "packets_redirected", "total_s", "controller_buffer_peak",
        "controller_packets"]
REST = ["instance_buffer_peak", "instance_buffered", "max_added_delay_us", "serialization_share", "src_stats",
        "stale_records"]
BY_CONTROLLER = ["testbed", "ctrl_delay_ms", "ctrl_rate_mbit", "at"]


def filled(**kw) -> MoveMetrics:
    m = MoveMetrics(mechanism="dist", guarantee="lf", opts=["dt"], src="nf0", dst="nf1", filter="all",
                    scopes=["per-flow"], epoch=5, phases_ms={"held": 1.0})
    for k in ("state_chunks", "state_bytes", "flows", "packets_redirected", "controller_buffer_peak",
              "controller_packets", "instance_buffer_peak", "instance_buffered", "stale_records"):
        setattr(m, k, 1)
    for k in ("transfer_s", "move_time_s", "redirect_time_s", "total_s", "max_added_delay_us", "serialization_share"):
        setattr(m, k, 0.5)
    m.src_stats = {}
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def test_dist_keys_in_the_logs_order():
    m = filled(extra={"go_ms": None, "trigger": {"fired": True}})
    assert list(m.to_dict()) == HEAD + ["go_ms", "trigger"] + TAIL + REST
    m.testbed, m.ctrl_delay_ms, m.ctrl_rate_mbit, m.at = "t", 0.0, 0.0, 1.0
    d = m.to_dict()
    assert list(d) == HEAD + ["go_ms", "trigger"] + TAIL + REST + BY_CONTROLLER
    assert d["go_ms"] is None                # a figure the mechanism reports stays, even when empty


def test_opennf_keys_and_its_buffer():
    m = filled(mechanism="opennf", controller={"received": 3})
    assert list(m.to_dict()) == HEAD + TAIL + ["controller"] + REST


def test_a_reply_read_back_prints_as_before():
    d = filled(extra={"go_ms": 2.0}).to_dict()
    m = MoveMetrics.from_dict(d)
    assert m.to_dict() == d
    rows = dict(m.rows())
    assert rows["move time (s)"] == "0.5000" and rows["flows"] == "1"
    assert MoveMetrics.from_dict({**d, "flows": None}).rows()[3] == ("flows", "-")
    assert m.title() == "dist LF dt nf0 → nf1 (all)"


def test_registered_names_are_the_requests_mechanisms():
    assert MECHANISMS[:2] == ["opennf", "dist"]
    with pytest.raises(BadInput, match="mechanism must be one of opennf, dist"):
        MoveRequest("nf0", "nf1", parse("all"), ("per-flow",), mechanism="sharp")

    class Sharp(mechanism.Mechanism):
        name = "sharp"

        def run(self, x):
            return {}
    try:
        mechanism.register(Sharp)
        assert MoveRequest("nf0", "nf1", parse("all"), ("per-flow",), mechanism="sharp").mechanism == "sharp"
    finally:
        mechanism.REGISTRY.pop("sharp")
        MECHANISMS.remove("sharp")


def test_same_instance_refused():
    with pytest.raises(BadInput, match="same instance"):
        MoveRequest("nf0", "nf0", parse("all"), ("per-flow",))


@pytest.mark.parametrize("mech,guarantee,opts", [
    ("dist", "op", "pz,ll,pc"),          # no er: nothing is released group by group
    ("dist", "op", "ll,er,pc"),          # no pz: one put at the end, no acknowledgement to pace on
    ("dist", "ng", "pz,ll,er,pc"),       # ng holds nothing
    ("opennf", "op", "pz,ll,er,pc"),     # dist's own
])
def test_pc_needs_dist_lf_and_pz_ll_er(mech, guarantee, opts):
    with pytest.raises(BadInput, match="pc \\(late locking paced"):
        MoveRequest("nf0", "nf1", parse("all"), ("per-flow",), guarantee=guarantee, mechanism=mech,
                    opts=frozenset(opts.split(",")))


def test_pc_with_dist_and_pz_ll_er_is_taken():
    r = MoveRequest("nf0", "nf1", parse("all"), ("per-flow",), guarantee="op", mechanism="dist",
                    opts=frozenset({"pz", "ll", "er", "pc"}))
    assert "pc" in r.opts
