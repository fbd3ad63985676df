"""The analyser on made-up samples: a condition is raised only after `samples` in a row, cleared
only after as many past the clear margin, and imbalance is judged once a round on shares."""
from nfx.orchestrate.analyse import Analyser
from nfx.orchestrate.monitor import Sample, sample_from
from nfx.orchestrate.policy import parse

POLICY = parse("[instance]\ncapacity_pps = 1000\n[thresholds]\noverload = 0.9\nunderload = 0.3\nimbalance = 0.8\n"
               "imbalance_min = 10\n[hysteresis]\nsamples = 3\nclear = 0.05\n")


def feed(an, inst, values, t0=0.0, flows=None, kinds=("overload",)):
    """One sample per value (pps), 0.1 s apart; the events of `kinds` they produce."""
    out = []
    for i, v in enumerate(values):
        t = round(t0 + i * 0.1, 3)
        out += [(t, e.kind, e.active) for e in an.feed(Sample(inst, t, 0.1, pps=v, flows=flows)) if e.kind in kinds]
    return out


def test_overload_raised_only_after_n_samples_in_a_row():
    an = Analyser(POLICY, ["nf0"])
    # 901 > 900 twice, a dip, then three in a row: raised on the third of those
    got = feed(an, "nf0", [901, 950, 500, 901, 902, 903, 904])
    assert got == [(0.5, "overload", True)]
    ev = an.events[0]
    assert (ev.instance, ev.value, ev.threshold, ev.since, ev.raised_at) == ("nf0", 903, 900, 0.3, 0.5)
    assert ev.cleared_at is None and ev.peak == 904          # the furthest since it began, raised or not
    assert [e.kind for e in an.active()] == ["overload"]


def test_exactly_at_the_threshold_is_not_overload():
    an = Analyser(POLICY, ["nf0"])
    assert feed(an, "nf0", [900] * 10) == []


def test_overload_clears_only_past_the_margin_for_n_samples():
    an = Analyser(POLICY, ["nf0"])
    feed(an, "nf0", [1000, 1200, 1000])
    assert an.active()
    # below 900 but not below 850 (0.85 x capacity): still held, however long
    assert feed(an, "nf0", [880, 860, 851, 851, 860], t0=1.0) == []
    # below 850: two, a bounce inside the band, then three
    got = feed(an, "nf0", [800, 700, 870, 800, 700, 600], t0=2.0)
    assert got == [(2.5, "overload", False)]
    ev = an.events[0]
    assert ev.cleared_at == 2.5 and ev.peak == 1200 and ev.clear_threshold == 850
    assert an.active() == []


def test_overload_raised_again_after_clearing_is_a_new_event():
    an = Analyser(POLICY, ["nf0"])
    feed(an, "nf0", [1000] * 3 + [0] * 3 + [1000] * 3)
    assert [(e.kind, e.active) for e in an.events if e.kind == "overload"] == [("overload", False), ("overload", True)]


def test_underload_and_its_clear_margin():
    an = Analyser(POLICY, ["nf0"])
    u = ("underload",)
    got = feed(an, "nf0", [299, 100, 0], kinds=u)
    assert got == [(0.2, "underload", True)]
    assert an.active()[0].peak == 0 and an.active()[0].threshold == 300
    # above 300 but not above 350: held
    assert feed(an, "nf0", [340, 349, 350, 320], t0=1.0, kinds=u) == []
    assert feed(an, "nf0", [351, 400, 500], t0=2.0, kinds=u) == [(2.2, "underload", False)]


def test_one_sample_hysteresis_reacts_at_once():
    an = Analyser(parse("[instance]\ncapacity_pps = 1000\n[hysteresis]\nsamples = 1\nclear = 0"), ["nf0"])
    assert feed(an, "nf0", [901, 899]) == [(0.0, "overload", True), (0.1, "overload", False)]


def both(an, pairs, t):
    """One round: a sample of each instance at time t; (kind, instance, active) of the imbalance events."""
    out = []
    for inst, (pps, flows) in pairs.items():
        out += [(e.kind, e.instance, e.active) for e in an.feed(Sample(inst, t, 0.1, pps=pps, flows=flows))
                if e.kind == "imbalance"]
    return out


def test_imbalance_on_flows_needs_whole_rounds():
    an = Analyser(POLICY, ["nf0", "nf1"])
    load = {"nf0": (500, 90), "nf1": (500, 10)}            # pps even, flows 90/10
    assert both(an, load, 0.0) == [] and both(an, load, 0.1) == []
    assert both(an, load, 0.2) == [("imbalance", "nf0", True)]
    ev = an.active()[0]
    assert ev.value == 0.9 and ev.threshold == 0.8 and ev.since == 0.0
    # nf0 alone sending samples completes no round: nothing is judged
    for i in range(5):
        assert an.feed(Sample("nf0", 0.3 + i / 10, 0.1, pps=500, flows=50)) == []
    assert an.rounds == 3
    # 78% (within the clear margin, above 75%) holds it; 70% three rounds clears it
    for t in (1.0, 1.1, 1.2, 1.3):
        assert both(an, {"nf0": (500, 78), "nf1": (500, 22)}, t) == []
    got = []
    for t in (2.0, 2.1, 2.2):
        got += both(an, {"nf0": (500, 70), "nf1": (500, 30)}, t)
    assert got == [("imbalance", "nf0", False)]


def test_imbalance_moves_to_the_instance_that_now_holds_the_flows():
    an = Analyser(POLICY, ["nf0", "nf1"])
    for t in (0.0, 0.1, 0.2):
        both(an, {"nf0": (0, 100), "nf1": (0, 0)}, t)
    got = []
    for t in (1.0, 1.1, 1.2):
        got += both(an, {"nf0": (0, 0), "nf1": (0, 100)}, t)
    assert sorted(got) == [("imbalance", "nf0", False), ("imbalance", "nf1", True)]


def test_imbalance_not_judged_below_the_minimum_or_with_one_instance():
    an = Analyser(POLICY, ["nf0", "nf1"])
    for t in (0.0, 0.1, 0.2, 0.3):
        assert both(an, {"nf0": (0, 9), "nf1": (0, 0)}, t) == []      # 9 flows < imbalance_min 10
    solo = Analyser(POLICY, ["nf0"])
    assert sum((solo.feed(Sample("nf0", t, 0.1, pps=500, flows=100)) for t in (0, .1, .2)), []) == []
    # a count the NF cannot give: not judged either
    for t in (1.0, 1.1, 1.2):
        assert both(an, {"nf0": (500, None), "nf1": (500, 5)}, t) == []


def test_imbalance_on_pps():
    an = Analyser(parse("[thresholds]\nimbalance_basis = \"pps\"\nimbalance_min = 100"), ["nf0", "nf1"])
    got = []
    for t in (0.0, 0.1, 0.2):
        got += both(an, {"nf0": (50_000, 1), "nf1": (1_000, 999)}, t)
    assert ("imbalance", "nf0", True) in got
    # the traffic stops: nothing to balance, so it clears after three rounds
    got = []
    for t in (1.0, 1.1, 1.2):
        got += both(an, {"nf0": (0, 1), "nf1": (0, 999)}, t)
    assert ("imbalance", "nf0", False) in got


def test_sample_from_a_stats_event():
    ev = {"stream": "stats", "ts": 100.5, "interval_s": 0.1,
          "delta": {"v_tx": 4900, "v_drop": 100, "r_ok": 5000, "r_nat_new": 3},
          "total": {"v_tx": 9000},
          "gauges": {"flows": 1000, "state_bytes": 152000, "hold_depth": 0, "hold_slots": 16384,
                     "prog_run_ns": 2_000_000, "prog_run_cnt": 10_000}}
    s, prog = sample_from("nf0", ev, (1_500_000, 5_000))
    assert s.pps == 50_000 and s.drops == 100 and s.t == 100.5
    assert s.verdicts == {"v_tx": 4900, "v_drop": 100} and s.reasons == {"r_ok": 5000, "r_nat_new": 3}
    assert (s.flows, s.state_bytes, s.hold_fill) == (1000, 152000, 0.0)
    assert (s.cpu_ns, s.runs) == (500_000, 5_000) and abs(s.cpu_share - 0.005) < 1e-12
    assert prog == (2_000_000, 10_000)
    # run stats off: packets came but the kernel counted no runs, so no CPU figure
    s2, _ = sample_from("nf0", {**ev, "gauges": {"prog_run_ns": 2_000_000, "prog_run_cnt": 10_000}}, prog)
    assert s2.cpu_ns is None and s2.cpu_share is None and s2.flows is None
