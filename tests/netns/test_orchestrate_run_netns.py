"""`nfx orchestrate run` against live traffic on a one-NAT testbed (a subprocess, as a user runs
it: the instances it adds load their programs in its process). Under a small ramp the loop adds
instances, moves runs of flows to them (DiST, OP), and at the low tail moves them back and
removes what it added; the sink finds nothing lost, duplicated or reordered over the whole run.
Then imbalance: every flow on nf0 of two instances, under budget, is evened out within 2 s."""
import json
import threading
import time

from nfx import registry
from nfx.orchestrate.policy import parse
from nfx.orchestrate.run import Loop
from nfx.paths import decision_log
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import nfx, running_testbed

RAMP_POLICY = """
[instance]
capacity_pps = 60000
[hysteresis]
samples = 3
[planner]
target = 0.6
max_instances = 3
cooldown_ms = 500
interval_ms = 300
"""


def test_ramp_scales_out_moves_and_scales_back_in_without_loss(tmp_path):
    pol = tmp_path / "p.toml"
    pol.write_text(RAMP_POLICY)
    parse(RAMP_POLICY)
    with running_testbed("sharp", "nat", instances=1) as rec:
        name = rec["name"]
        out, png = tmp_path / "tl.json", tmp_path / "tl.png"
        r = nfx("orchestrate", "run", "--name", name, "--policy", str(pol), "--scenario", "ramp", "--flows", "2048",
                "--low", "8000", "--peak", "80000", "--step-s", "0.5", "--hold-s", "2", "--tail-s", "6",
                "--out", str(out), "--plot", str(png), "--json", timeout=240)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        tl = json.loads(out.read_text())
        acts = tl["actions"]
        assert all(a["ok"] for a in acts), [a for a in acts if not a["ok"]]
        # out to more than one instance, flows moved there, and back to the one it began with
        assert s["scale_outs"] >= 1 and s["moves"] >= 2 and s["instances_peak"] >= 2, s
        assert s["scale_ins"] == s["scale_outs"] and s["instances_end"] == 1, s
        assert [n for n in registry.load(name)["nodes"] if n.startswith("nf")] == ["nf0"]
        # every move says why; the moves carried OP DiST moves
        assert all(a["reason"] for a in acts)
        assert all(a["mechanism"] == "dist" and a["guarantee"] == "op" for a in acts if a["kind"] == "move")
        # the traffic is whole over the whole run, moves and all
        assert s["sent"] > 0 and s["lost"] == 0 and s["duplicated"] == 0 and s["reordered"] == 0, s
        assert isinstance(s["path_drops"], int) and s["path_drops"] >= 0, s
        # the traffic over time (the plot's lower panel): sampled every 0.25 s through the run
        ts = tl["traffic_samples"]
        assert len(ts) >= 30 and ts[-1]["sent"] > 0 and any(x["p99_us"] for x in ts)
        assert all(0 <= x["received"] <= x["sent"] for x in ts)
        assert png.stat().st_size > 10_000
        assert decision_log(name).exists()
    assert not decision_log(name).exists()          # the testbed took its decision log with it


IMBALANCE_POLICY = parse("""
[instance]
capacity_pps = 100000
[thresholds]
imbalance = 0.8
imbalance_min = 100
[hysteresis]
samples = 2
[planner]
interval_ms = 200
cooldown_ms = 300
min_instances = 2
""")


def test_imbalance_is_corrected_within_two_seconds():
    with running_testbed("sharp", "nat", instances=2) as rec:
        name = rec["name"]
        with rig(name, 1024, flows_per_addr=16) as (gen, sink):
            stop = threading.Event()
            box = {}
            loop = Loop(name, IMBALANCE_POLICY)

            def run_loop():
                box["tl"] = loop.run(stop=stop.is_set)
            t = threading.Thread(target=run_loop)
            t.start()
            try:
                box["traffic"] = measure(gen, sink, 20_000, 6.0, 1.0)
            finally:
                stop.set()
                t.join(120)
        tl, traffic = box["tl"], box["traffic"]
        raised = [e for e in tl["events"] if e["kind"] == "imbalance" and e["active"] and e["instance"] == "nf0"]
        assert raised, tl["events"]
        moves = [a for a in tl["actions"] if a["kind"] == "move"]
        assert moves and all(a["ok"] for a in moves), tl["actions"]
        assert moves[0]["instance"] == "nf0" and moves[0]["dst"] == "nf1"
        assert moves[0]["end"] - raised[0]["t"] <= 2.0, json.dumps((raised[0], tl["actions"], tl["plans"][:2]), indent=1)
        # no instance was added or removed: the load is far under budget
        assert not [a for a in tl["actions"] if a["kind"] != "move"]
        assert traffic["lost"] == 0 and traffic["duplicated"] == 0 and traffic["reordered"] == 0, traffic




def test_a_failed_instance_is_recovered_through_failover_without_an_operator(tmp_path):
    """netns/pair.json: nf0 primary, nf1 its secondary, nf2 a spare, failure detection on. The
    loop runs (far under budget: it has nothing to plan) while `--scenario failure` kills nf0
    under traffic: the controller promotes nf1, the loop notes nf0 lost and recovered by nf1,
    and asks no operator for anything."""
    pol = tmp_path / "p.toml"
    pol.write_text("""
[instance]
capacity_pps = 1000000
[thresholds]
imbalance_min = 1000000000
[planner]
interval_ms = 200
min_instances = 3
""")
    with running_testbed("pair", "nat", hold_slots=256) as rec:
        name = rec["name"]
        r = nfx("cluster", "up", "--name", name, "--batch", "30", "--misses", "4", "--json")
        assert r.returncode == 0, r.stderr
        try:
            out = tmp_path / "tl.json"
            r = nfx("orchestrate", "run", "--name", name, "--policy", str(pol), "--scenario", "failure",
                    "--kill", "nf0", "--flows", "200", "--flows-per-addr", "10", "--peak", "50000", "--hold-s", "3",
                    "--out", str(out), "--json", timeout=180)
            assert r.returncode == 0, r.stderr
            s = json.loads(r.stdout)
            tl = json.loads(out.read_text())
            kinds = [(n["kind"], n.get("instance"), n.get("by")) for n in tl["notes"] if n["kind"] != "step"]
            assert ("killed", "nf0", None) in kinds and ("lost", "nf0", None) in kinds, kinds
            assert ("recovered", "nf0", "nf1") in kinds, kinds
            assert s["failed_actions"] == 0 and s["scale_outs"] == 0 and s["scale_ins"] == 0, s
            # the failover's own loss: at most the detection and steering time's packets
            assert s["sent"] > 0 and s["lost"] <= 50_000 * 0.25 and s["duplicated"] == 0, s
        finally:
            nfx("cluster", "down", "--name", name)


DRAIN_POLICY = """
[instance]
capacity_pps = 100000
[thresholds]
imbalance_min = 1000000000
[planner]
interval_ms = 300
cooldown_ms = 300
min_instances = 2
max_instances = 3
block_bits = 3
"""


def test_a_drain_moves_off_upgrades_and_moves_back_without_loss(tmp_path):
    """Two NATs, every flow on nf0 (the testbed's default), far under budget: `--drain nf0` under
    steady traffic moves nf0's flows to nf1, hot-upgrades nf0 (a new program id), and moves them
    back; OP DiST moves, nothing lost, duplicated or reordered, each step a plan with its reason."""
    from nfx.loader.attach import xdp_attachments
    pol = tmp_path / "p.toml"
    pol.write_text(DRAIN_POLICY)
    parse(DRAIN_POLICY)
    with running_testbed("sharp", "nat", instances=2) as rec:
        name = rec["name"]
        ns = rec["nodes"]["nf0"]["ns"]
        before = {i: p for i, (p, _) in xdp_attachments(ns).items()}
        out = tmp_path / "tl.json"
        r = nfx("orchestrate", "run", "--name", name, "--policy", str(pol), "--scenario", "steady",
                "--flows", "512", "--flows-per-addr", "16", "--low", "30000", "--peak", "30000", "--hold-s", "8",
                "--drain", "nf0", "--drain-at", "1.5", "--out", str(out), "--json", timeout=240)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        tl = json.loads(out.read_text())
        acts = tl["actions"]
        assert acts and all(a["ok"] for a in acts), [a for a in acts if not a["ok"]]
        ups = [a for a in acts if a["kind"] == "upgrade"]
        assert len(ups) == 1 and ups[0]["instance"] == "nf0", acts
        up = ups[0]
        assert up["new_prog_id"] != up["old_prog_id"] and up["old_prog_id"] in before.values()
        after = {i: p for i, (p, _) in xdp_attachments(ns).items()}
        assert set(after.values()) == {up["new_prog_id"]}, (before, after)
        off = [a for a in acts if a["kind"] == "move" and a["instance"] == "nf0"]
        back = [a for a in acts if a["kind"] == "move" and a["dst"] == "nf0"]
        assert off and back and len(off) + len(back) == len(acts) - 1, acts
        assert all(a["end"] <= up["start"] for a in off) and all(a["start"] >= up["end"] for a in back)
        assert all(a["dst"] == "nf1" for a in off) and sum(a["flows"] for a in off) == sum(a["flows"] for a in back)
        assert all(a["reason"].startswith("drain nf0") for a in acts)
        assert all(a["mechanism"] == "dist" and a["guarantee"] == "op" for a in off + back)
        assert s["drains"] == 1 and s["upgrades"] == 1 and s["scale_outs"] == 0, s
        assert set(s["plan_kinds"]) == {"drain-off", "drain-upgrade", "drain-back"}, s
        # its flows came back: nf0 holds them at the end, nf1 none
        last = {}
        for x in tl["samples"]:
            last[x["instance"]] = x["flows"]
        assert last["nf0"] == 512 and last["nf1"] == 0, last
        assert s["sent"] > 0 and s["lost"] == 0 and s["duplicated"] == 0 and s["reordered"] == 0, s
