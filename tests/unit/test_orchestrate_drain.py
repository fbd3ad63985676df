"""The maintenance drain's planning (drain.py) on made-up views: off (an instance added when the
others lack room), the upgrade once nothing movable is left, back, done; waits while its
instance cools down; the same prefixes back (their rules replaced: no new switch slot)."""
from nfx.orchestrate.drain import Drain
from nfx.orchestrate.plan import Planner, views_from
from nfx.orchestrate.policy import parse
from nfx.orchestrate.slots import SlotBook
from tests.unit.test_orchestrate_plan import A, flows, status

POLICY = parse("""
[instance]
capacity_pps = 150000
[planner]
target = 0.6
max_instances = 3
block_bits = 2
""")


def apply(views_flows: dict, acts) -> dict:
    """The flows after the moves: each move's source prefix from its source to its destination."""
    import ipaddress
    out = {n: list(f) for n, f in views_flows.items()}
    for a in acts:
        if a.kind == "add":
            out.setdefault(a.instance, [])
        if a.kind != "move":
            continue
        net = ipaddress.IPv4Network(a.filter.removeprefix("src="))
        moving = [f for f in out[a.instance] if ipaddress.IPv4Address(f[0]) in net]
        out[a.instance] = [f for f in out[a.instance] if f not in moving]
        out.setdefault(a.dst, []).extend(moving)
    return out


def views(fl):
    pps = {n: sum(f[1] for f in v) for n, v in fl.items()}
    return views_from(fl, pps, 2, fixed={"nf0", "nf1"})


def test_a_drain_moves_off_upgrades_and_moves_back():
    fl = {"nf0": flows(256, 100.0), "nf1": flows(64, 100.0, base=A + 256)}
    p, d = Planner(POLICY), Drain("nf0")
    p.begin()
    kind, acts = d.plan(p, views(fl), spare=["nf2"], busy=set())
    assert kind == "drain-off" and acts and all(a.kind == "move" and a.instance == "nf0" and a.dst == "nf1"
                                                for a in acts)
    assert all(a.reason.startswith("drain nf0") for a in acts)
    assert sum(a.flows for a in acts) == 256
    off = acts
    fl = apply(fl, acts)
    assert d.plan(p, views(fl), spare=["nf2"], busy={"nf0"}) == ("drain", [])     # cooling down: wait
    kind, acts = d.plan(p, views(fl), spare=["nf2"], busy=set())
    assert kind == "drain-upgrade" and [(a.kind, a.instance) for a in acts] == [("upgrade", "nf0")]
    d.upgraded(False)                            # failed: tried again
    assert d.plan(p, views(fl), spare=["nf2"], busy=set())[0] == "drain-upgrade"
    d.upgraded(True)
    kind, acts = d.plan(p, views(fl), spare=["nf2"], busy=set())
    assert kind == "drain-back" and all(a.kind == "move" and a.instance == "nf1" and a.dst == "nf0" for a in acts)
    assert sorted(a.filter for a in acts) == sorted(a.filter for a in off)     # the prefixes that went
    assert sum(a.flows for a in acts) == 256                                  # nf1's own stay
    fl = apply(fl, acts)
    assert d.plan(p, views(fl), spare=["nf2"], busy=set()) == ("drain", []) and d.done
    assert len(fl["nf0"]) == 256 and len(fl["nf1"]) == 64


def test_a_drain_adds_an_instance_when_the_others_lack_room_and_backs_moves_replace_rules():
    fl = {"nf0": flows(512, 150.0), "nf1": flows(512, 150.0, base=A + 256)}     # 76.8k each, 90k target
    p, d = Planner(POLICY), Drain("nf0")
    p.begin(SlotBook.from_status(status([])))
    kind, acts = d.plan(p, views(fl), spare=["nf2"], busy=set())
    assert acts[0].kind == "add" and acts[0].instance == "nf2" and "room" in acts[0].reason
    moves = acts[1:]
    assert moves and {a.dst for a in moves} <= {"nf1", "nf2"} and sum(a.flows for a in moves) == 512
    rules = [(a.filter.removeprefix("src="), a.dst) for a in reversed(moves)]
    fl = apply(fl, acts)
    d.plan(p, views(fl), spare=["nf3"], busy=set())
    d.upgraded(True)
    p.begin(SlotBook.from_status(status(rules)))
    kind, acts = d.plan(p, views(fl), spare=["nf3"], busy=set())
    assert kind == "drain-back" and sum(a.flows for a in acts) == 512
    assert all("replaces its own rule" in a.reason for a in acts), [a.reason for a in acts]


def test_a_drain_that_cannot_fit_says_why_and_moves_nothing():
    fl = {"nf0": flows(512, 170.0), "nf1": flows(512, 170.0, base=A + 256),
          "nf2": flows(512, 170.0, base=A + 512)}                   # 87k each, at max_instances
    p, d = Planner(POLICY), Drain("nf0")
    p.begin()
    assert d.plan(p, views(fl), spare=["nf3"], busy=set()) == ("drain-off", [])
    assert "cannot take" in d.note and "max_instances" in d.note
