"""The planner on made-up views: how many instances, which runs of blocks go where, scale-in,
imbalance, the cost model, and what it must never do (split blocks, busy instances, past the
target)."""
import ipaddress

import pytest

from nfx.errors import BadInput
from nfx.orchestrate.analyse import Event
from nfx.orchestrate.plan import (Block, CostModel, InstanceView, Planner, choose_run, prefix_filter,
                                  prefixes, runs_of, views_from)
from nfx.orchestrate.policy import parse

POLICY_TEXT = """
[instance]
capacity_pps = 150000
[planner]
target = 0.6
max_instances = 4
block_bits = 2
"""
POLICY = parse(POLICY_TEXT)
A = 0x0A000100          # 10.0.1.0: block_bits 2 makes blocks of 4 addresses


def ev(kind, inst, active=True):
    return Event(kind, inst, 0.0, 0.0, 0.0, since=0.0, raised_at=0.0, cleared_at=None if active else 1.0)


def flows(n, pps_each, base=A, state=96, per_addr=4):
    """n flows from consecutive addresses, per_addr flows each"""
    return [(base + i // per_addr, pps_each, state) for i in range(n)]


def test_views_group_flows_into_blocks_and_leave_split_blocks_out():
    v = views_from({"nf0": [(A, 10.0, 96), (A + 3, 5.0, 96), (A + 5, 1.0, 96)],
                    "nf1": [(A + 6, 2.0, 96), (A + 20, 3.0, 96)]}, {"nf0": 20.0}, 2, fixed={"nf0"})
    # block A/4 (.0-.3) is nf0's alone; the next (.4-.7) has flows at both: split
    assert set(v["nf0"].blocks) == {A >> 2}
    assert v["nf0"].blocks[A >> 2] == Block(A >> 2, 2, 15.0, 192)
    assert set(v["nf1"].blocks) == {(A + 20) >> 2}
    assert v["nf0"].pps == 20.0 and v["nf1"].pps == 5.0      # measured where given, else summed
    assert v["nf0"].flows == 3 and not v["nf0"].removable and v["nf1"].removable


def test_runs_stop_at_a_gap():
    v = InstanceView("a", 0, blocks={i: Block(i, 1, 1.0, 1) for i in (1, 2, 3, 7, 8)})
    assert [[b.index for b in r] for r in runs_of(v)] == [[1, 2, 3], [7, 8]]


def test_windows_are_prefixes():
    run = [Block(i, 1, 1.0, 1) for i in range(3, 9)]          # 3..8
    wins = [(w[0].index, len(w)) for w in prefixes(run)]
    assert wins == [(i, 1) for i in range(3, 9)] + [(4, 2), (6, 2), (4, 4)]
    assert prefix_filter(A >> 2, 1, 2) == "src=10.0.1.0/30"
    assert prefix_filter(A >> 2, 4, 2) == "src=10.0.1.0/28"
    with pytest.raises(ValueError):
        prefix_filter((A >> 2) + 1, 2, 2)


def test_choose_run_meets_the_amount_within_room_by_strategy():
    light = [Block(i, 10, 10.0, 1000) for i in range(4)]
    heavy = [Block(8 + i, 1, 10.0, 100) for i in range(4)]
    # heaviest: the same pps in the fewest flows
    r = choose_run([light, heavy], 20.0, 100.0, "heaviest")
    assert [b.index for b in r] == [8, 9]
    r = choose_run([light, heavy], 20.0, 100.0, "least-bytes")
    assert [b.index for b in r] == [8, 9]
    # nothing fits the room: the best below the amount
    r = choose_run([[Block(0, 1, 50.0, 1)]], 20.0, 30.0, "heaviest")
    assert r is None
    r = choose_run([[Block(0, 1, 5.0, 1), Block(1, 1, 5.0, 1)]], 20.0, 30.0, "heaviest")
    assert [b.index for b in r] == [0, 1]


def test_ramp_peak_on_one_instance_adds_up_to_the_maximum_and_spreads_the_load():
    views = views_from({"nf0": flows(4096, 400_000 / 4096, per_addr=8)}, {"nf0": 400_000}, 2, fixed={"nf0"})
    acts = Planner(POLICY).plan(views, [ev("overload", "nf0")], spare=["nf1", "nf2", "nf3", "nf4"])
    adds = [a for a in acts if a.kind == "add"]
    # 400k at 90k a target wants 5; the policy allows 4
    assert [a.instance for a in adds] == ["nf1", "nf2", "nf3"]
    moves = [a for a in acts if a.kind == "move"]
    assert moves and all(a.instance == "nf0" for a in moves)
    load = {"nf0": 400_000.0, "nf1": 0.0, "nf2": 0.0, "nf3": 0.0}
    for m in moves:
        load[m.instance] -= m.pps
        load[m.dst] += m.pps
        net = ipaddress.IPv4Network(m.filter.removeprefix("src="))      # a prefix, aligned
        assert net.prefixlen <= 30
        assert m.mechanism == "dist" and m.guarantee == "op" and m.est_s is not None
    # every instance ends near the mean (prefixes come in powers of two: within a few blocks' pps)
    assert max(load.values()) - min(load.values()) <= 0.1 * 400_000, load
    # runs carried never overlap
    spans = sorted(m.blocks for m in moves)
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))


def test_nothing_to_do_below_the_target():
    views = views_from({"nf0": flows(100, 300.0), "nf1": flows(100, 300.0, base=A + 64)},
                       {"nf0": 30_000, "nf1": 30_000}, 2, fixed={"nf0", "nf1"})
    assert Planner(POLICY).plan(views, [], spare=["nf2"]) == []


def test_busy_instances_are_left_alone():
    views = views_from({"nf0": flows(1000, 200.0), "nf1": []}, {"nf0": 200_000, "nf1": 0}, 2,
                       fixed={"nf0", "nf1"})
    p = Planner(POLICY)
    assert [a.kind for a in p.plan(views, [], spare=[], busy={"nf1"})] == []
    assert {a.dst for a in p.plan(views, [], spare=[]) if a.kind == "move"} == {"nf1"}


def test_imbalance_moves_flows_towards_an_even_split():
    views = views_from({"nf0": flows(800, 10.0), "nf1": flows(200, 10.0, base=A + 256)},
                       {"nf0": 8000, "nf1": 2000}, 2, fixed={"nf0", "nf1"})
    acts = Planner(POLICY).plan(views, [ev("imbalance", "nf0")], spare=[])
    assert len(acts) == 1 and acts[0].kind == "move" and acts[0].dst == "nf1"
    assert 250 <= acts[0].flows <= 350          # towards 500 each, in whole blocks of 64


def test_scale_in_empties_the_underloaded_removable_instance_then_removes_it():
    views = views_from({"nf0": flows(300, 50.0), "nf1": flows(300, 50.0, base=A + 256)},
                       {"nf0": 15_000, "nf1": 15_000}, 2, fixed={"nf0"})
    acts = Planner(POLICY).plan(views, [ev("underload", "nf1"), ev("underload", "nf0")], spare=[])
    assert [a.kind for a in acts][-1] == "remove" and acts[-1].instance == "nf1"
    moves = acts[:-1]
    assert moves and all(a.kind == "move" and a.instance == "nf1" and a.dst == "nf0" for a in moves)
    assert sum(a.flows for a in moves) == 300


def test_scale_in_waits_when_the_rest_cannot_take_the_load():
    views = views_from({"nf0": flows(100, 800.0), "nf1": flows(100, 300.0, base=A + 256)},
                       {"nf0": 80_000, "nf1": 30_000}, 2, fixed={"nf0"})
    # 110k wants 2 at 90k each: no scale-in; and with a forced underload the rest has no room
    assert Planner(POLICY).plan(views, [ev("underload", "nf1")], spare=[]) == []


def test_a_split_block_keeps_its_instance():
    views = views_from({"nf0": flows(10, 10.0), "nf1": [(A + 1, 10.0, 96)]}, {"nf0": 100, "nf1": 10}, 2,
                       fixed={"nf0"})
    acts = Planner(POLICY).plan(views, [ev("underload", "nf1")], spare=[])
    assert acts == []                      # nf1's one flow shares a block with nf0's: not movable


def test_cost_model_picks_the_faster_mechanism_from_past_moves():
    c = CostModel(prior_s=0.2)
    assert c.estimate("dist", 100) == 0.2
    c.record("dist", 100, 0.1)
    assert c.estimate("dist", 5000) == pytest.approx(0.1)
    c.record("dist", 1100, 0.2)
    assert c.estimate("dist", 2100) == pytest.approx(0.3)
    c.record("opennf", 100, 0.5)
    assert c.choose(["dist", "opennf"], 100)[0] == "dist"


@pytest.mark.parametrize("text, field", [
    ('[planner]\nstrategy = "random"', "strategy"),
    ('[planner]\nmechanisms = "dist,teleport"', "mechanisms"),
    ('[planner]\nguarantee = "maybe"', "guarantee"),
    ('[planner]\nmin_instances = 3\nmax_instances = 2', "min_instances"),
    ('[planner]\ntarget = 0.95', "target"),
    ('[planner]\ntarget = 0.2', "target"),
    ('[planner]\nblock_bits = 17', "block_bits"),
    ('[planner]\nsurprise = 1', "surprise"),
])
def test_bad_planner_sections_are_refused(text, field):
    with pytest.raises(BadInput, match=field):
        parse(text)


# ---- the loop's pure parts: the inventory's decoding, the scenarios, the timeline ----
def test_flows_of_reads_source_ports_and_counts_from_chunks():
    import ctypes as ct
    from nfx import layout as L
    from nfx.orchestrate.inventory import flows_of
    from nfx.state.wire import Chunk
    keys = (L.FlowKey * 2)()
    vals = (L.NatEntry * 2)()
    for i, (addr, pkts) in enumerate(((A + 2, 7), (0xC0A80001, 9))):
        keys[i].saddr = int.from_bytes(addr.to_bytes(4, "big"), "little")    # network order
        vals[i].pkts = pkts
    c = Chunk("nat_fwd", "per-flow", "hash", 2, ct.sizeof(L.FlowKey), ct.sizeof(L.NatEntry), 1, "x",
              bytes(keys), bytes(vals))
    other = Chunk("nat_rev", "per-flow", "hash", 2, ct.sizeof(L.FlowKey), ct.sizeof(L.NatEntry), 1, "x",
                  bytes(keys), bytes(vals))
    k, addrs, pkts = flows_of([c, other], "nat_fwd", L.NatEntry)
    assert addrs.tolist() == [A + 2, 0xC0A80001] and pkts.tolist() == [7, 9] and len(k) == 2
    bad = Chunk("nat_fwd", "per-flow", "hash", 1, 8, 8, 1, "x", bytes(8), bytes(8))
    with pytest.raises(BadInput, match="nat_fwd"):
        flows_of([bad], "nat_fwd", L.NatEntry)


def test_scenario_profiles_and_refusals():
    from nfx.orchestrate import scenario as S
    ramp = S.profile("ramp", 50_000, 400_000, step_s=1, hold_s=4, tail_s=6, steps=7)
    rates = [r for r, _ in ramp]
    assert rates[0] == 50_000 and max(rates) == 400_000 and rates[-1] == 50_000
    assert rates == sorted(rates[:rates.index(400_000) + 1]) + sorted(rates[rates.index(400_000) + 1:], reverse=True)
    assert S.duration(ramp) == 2 + 6 + 4 + 6 + 6
    assert S.profile("flash", 10, 20, hold_s=2, tail_s=4) == [(10, 2), (20, 2), (10, 4)]
    for bad in (dict(name="zigzag"), dict(name="ramp", low=0), dict(name="ramp", low=5, peak=4),
                dict(name="ramp", hold_s=0)):
        with pytest.raises(BadInput):
            S.profile(**{"low": 1, "peak": 2, **bad})


def test_timeline_counts_time_over_budget_and_actions():
    from types import SimpleNamespace
    from nfx.orchestrate.timeline import Timeline
    tl = Timeline(capacity_pps=100.0, interval_s=0.1)
    for i, pps in enumerate((50, 150, 160, 90)):
        tl.sample(SimpleNamespace(got=tl.t0 + i * 0.1, instance="nf0", pps=pps, drops=0, flows=1))
    tl.action({"kind": "add", "ok": True, "start": 0.1})
    tl.action({"kind": "move", "ok": True, "start": 0.2})
    tl.action({"kind": "move", "ok": False, "start": 0.3})
    tl.in_service(["nf0", "nf1"])
    s = tl.summary({"sent": 10, "received": 10, "lost": 0, "duplicated": 0, "reordered": 0, "lat_p99_us": 5.0})
    assert s["seconds_over_budget"] == pytest.approx(0.2)
    assert (s["scale_outs"], s["moves"], s["failed_actions"], s["instances_peak"]) == (1, 1, 1, 2)
    assert s["lost"] == 0 and s["latency_us"]["p99"] == 5.0


def test_no_scale_in_while_the_rest_would_run_near_the_target():
    # 3 instances at 55k each (165k): 2 would carry it at 82.5k, under the 90k target but above
    # 80% of it: a total hovering there must not add and remove an instance by turns
    views = views_from({"nf0": flows(64, 55_000 / 64), "nf1": flows(64, 55_000 / 64, base=A + 64),
                        "nf2": flows(64, 55_000 / 64, base=A + 128)},
                       {"nf0": 55_000, "nf1": 55_000, "nf2": 55_000}, 2, fixed={"nf0"})
    assert Planner(POLICY).plan(views, [ev("underload", "nf2")], spare=[]) == []
    # at 40k each (120k: 60k each on two), it goes
    views = views_from({"nf0": flows(64, 40_000 / 64), "nf1": flows(64, 40_000 / 64, base=A + 64),
                        "nf2": flows(64, 40_000 / 64, base=A + 128)},
                       {"nf0": 40_000, "nf1": 40_000, "nf2": 40_000}, 2, fixed={"nf0"})
    assert Planner(POLICY).plan(views, [ev("underload", "nf2")], spare=[])[-1].kind == "remove"


# ---- the switches' wildcard slots (slots.py) ----
from nfx.orchestrate.slots import SlotBook  # noqa: E402


def status(moves, used=None, spread=False, default="nf0"):
    """GET /status's switches: an inside switch with these move rules ((src, to), newest first)
    over the defaults (the host's traffic to nf0, the rest to the host), and an outside one."""
    rules = [{"prio": 900 - i, "src": src, "dst": None, "sport": 0, "dport": 0, "proto": None,
              "from_host": True, "to": [to], "armed": False} for i, (src, to) in enumerate(moves)]
    defaults = [{"prio": 1000, "src": None, "dst": None, "sport": 0, "dport": 0, "proto": None,
                 "from_host": True, "to": [default], "armed": False},
                {"prio": 2000, "src": None, "dst": None, "sport": 0, "dport": 0, "proto": None,
                 "from_host": False, "to": ["h1"], "armed": False}]
    return {"steers_by_key": spread, "switches": {
        "si": {"side": "in", "wild_max": 16, "wild_used": len(moves) + 2 if used is None else used,
               "moves": sorted(rules, key=lambda r: r["prio"]), "defaults": defaults},
        "so": {"side": "out", "wild_max": 16, "wild_used": 2, "moves": [], "defaults": []}}}


def net(text):
    return ipaddress.IPv4Network(text)


def test_slot_book_reads_the_inside_switch_and_counts_what_a_move_leaves():
    book = SlotBook.from_status(status([("10.0.1.0/30", "nf1"), ("10.0.1.4/30", "nf1")]))
    assert [s.name for s in book.switches] == ["si"] and book.free == 12
    assert book.need(net("10.0.1.0/30")) == 1 and book.need(net("10.0.1.8/30")) == 2
    assert book.cost(net("10.0.1.8/30"), "nf2") == 1              # a new rule
    assert book.cost(net("10.0.1.0/30"), "nf2") == 0              # replaces its own
    # a wider prefix takes out the two it covers: one slot freed
    assert book.cost(net("10.0.1.0/29"), "nf2") == -1
    # moved back where the default sends it: replaced now, taken out at the next move's pruning
    back = book.after(net("10.0.1.0/30"), "nf0")
    assert back.free == 12 and back.after(net("10.0.2.0/30"), "nf1").free == 12
    assert SlotBook.from_status(status([], spread=True)) is None
    # full: only a prefix with a rule of its own fits (one free slot)
    full = SlotBook.from_status(status([("10.0.1.0/30", "nf1")], used=15))
    assert full.cost(net("10.0.1.8/30"), "nf1") is None and full.cost(net("10.0.1.0/30"), "nf0") == 0


def test_the_planner_never_plans_more_moves_than_the_slots_allow():
    views = views_from({"nf0": flows(4096, 400_000 / 4096, per_addr=8)}, {"nf0": 400_000}, 2, fixed={"nf0"})
    free = SlotBook.from_status(status([]))
    p = Planner(POLICY)
    unbounded = [a for a in p.plan(views, [ev("overload", "nf0")], spare=["nf1", "nf2", "nf3"], slots=free)
                 if a.kind == "move"]
    tight = SlotBook.from_status(status([], used=13))             # 3 free: two new rules at most
    acts = p.plan(views, [ev("overload", "nf0")], spare=["nf1", "nf2", "nf3"], slots=tight)
    moves = [a for a in acts if a.kind == "move"]
    assert 0 < len(moves) < len(unbounded)
    book = tight
    for m in moves:                      # each fits when its turn comes, as the controller checks
        n = net(m.filter.removeprefix("src="))
        assert book.fits(n), (m, book)
        book = book.after(n, m.dst)
        assert "switch slots:" in m.reason
    assert book.free >= 0


def test_with_one_slot_free_only_a_prefix_with_its_own_rule_moves_and_else_the_plan_says_why():
    # nf0 over the target; one of its prefixes was moved before (to nf2, and back): its rule is in force
    views = views_from({"nf0": flows(64, 2000.0, per_addr=4), "nf1": []}, {"nf0": 128_000, "nf1": 0}, 2,
                       fixed={"nf0", "nf1"})
    p = Planner(POLICY)
    assert p.plan(views, [ev("overload", "nf0")], spare=[])[0].filter.endswith("/29")    # 64k of 128k
    one = SlotBook.from_status(status([("10.0.1.8/30", "nf0")], used=15))
    acts = p.plan(views, [ev("overload", "nf0")], spare=[], slots=one)
    assert [a.filter for a in acts if a.kind == "move"] == ["src=10.0.1.8/30"], acts
    assert "replaces its own rule" in acts[0].reason
    none = SlotBook.from_status(status([("10.0.9.0/28", "nf1")], used=15))
    assert p.plan(views, [ev("overload", "nf0")], spare=[], slots=none) == []
    assert any("wildcard slot" in n and "1 free" in n for n in p.notes), p.notes


def test_with_few_slots_left_a_move_that_takes_none_goes_first():
    # nf0 holds two blocks no one prefix names: .4/30 at 40k pps, which has a rule, and .8/30 at 16k;
    # the host's traffic goes to nf2 by default, so the rule is no redundant one a move takes out
    fl = [(A + 4 + i // 4, 2500.0, 96) for i in range(16)] + [(A + 8 + i // 4, 1000.0, 96) for i in range(16)]
    views = views_from({"nf0": fl, "nf1": []}, {"nf0": 56_000, "nf1": 10_000}, 2, fixed={"nf0", "nf1"})
    p = Planner(POLICY)
    plenty = SlotBook.from_status(status([("10.0.1.4/30", "nf0")], default="nf2"))
    scarce = SlotBook.from_status(status([("10.0.1.4/30", "nf0")], used=12, default="nf2"))
    first = p.plan(views, [ev("overload", "nf0")], spare=[], slots=plenty)[0]
    assert first.filter == "src=10.0.1.8/30" and "a new rule, 1 taken" in first.reason    # the closest to 23k
    first = p.plan(views, [ev("overload", "nf0")], spare=[], slots=scarce)[0]
    assert first.filter == "src=10.0.1.4/30" and "replaces its own rule" in first.reason  # no new slot


# ---- cluster-first ----
CLUSTER_POLICY = parse(POLICY_TEXT + 'strategy = "cluster-first"\n')


def test_cluster_first_prefers_a_member_of_the_source_cluster_then_the_others():
    clusters = {"nf0": "c0", "nf1": "c0", "nf2": "c1", "nf3": "c1"}
    loads = {"nf0": 120_000, "nf1": 50_000, "nf2": 0, "nf3": 0}
    views = views_from({"nf0": flows(400, 300.0)}, loads, 2, fixed=set(loads))
    acts = Planner(CLUSTER_POLICY).plan(views, [ev("overload", "nf0")], spare=[], clusters=clusters)
    assert acts[0].kind == "move" and acts[0].dst == "nf1", acts
    assert "nf1 shares nf0's cluster c0" in acts[0].reason
    # heaviest would send it to an empty instance of the other cluster
    assert Planner(POLICY).plan(views, [ev("overload", "nf0")], spare=[], clusters=clusters)[0].dst in ("nf2", "nf3")
    # the member has no room: outside the cluster, and the reason says so
    loads["nf1"] = 95_000
    views = views_from({"nf0": flows(400, 300.0)}, loads, 2, fixed=set(loads))
    acts = Planner(CLUSTER_POLICY).plan(views, [ev("overload", "nf0")], spare=[], clusters=clusters)
    assert acts[0].dst in ("nf2", "nf3") and "no member of nf0's cluster c0 (nf1) has room" in acts[0].reason
    # no sharing clusters at all: the least loaded, said so
    acts = Planner(CLUSTER_POLICY).plan(views, [ev("overload", "nf0")], spare=[], clusters={})
    assert "nf0 is in no sharing cluster" in acts[0].reason


def test_cluster_first_is_a_valid_strategy_and_others_are_refused():
    assert CLUSTER_POLICY.planner.strategy == "cluster-first"
    with pytest.raises(BadInput, match="cluster-first"):
        parse('[planner]\nstrategy = "cluster_first"')
