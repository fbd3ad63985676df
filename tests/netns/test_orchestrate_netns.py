"""The monitor and the analyser against live traffic: 50k pps all on nf0 of a two-NAT testbed,
whose instances' budget is 20k pps. The monitor sees nf0 near 50k and nf1 near 0; the analyser
raises overload and imbalance on nf0; once every flow moves to nf1 (DiST, LF) the conditions
on nf0 clear and nf1 takes them over. Then `nfx orchestrate watch --json` on the idle testbed."""
import json
import statistics
import threading
import time

from nfx.orchestrate import watch
from nfx.orchestrate.monitor import Sample
from nfx.orchestrate.policy import parse
from nfx.procs import controller
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import nfx, running_testbed

FLOWS, RATE, CAP = 1000, 50_000, 20_000
SEND_S, MOVE_AT = 3.0, 1.5              # traffic from ~0.3 s into the watch; the move 1.2 s later
POLICY_TEXT = f"""
[instance]
capacity_pps = {CAP}
[thresholds]
imbalance_min = 100
[hysteresis]
samples = 3
[monitor]
interval_ms = 100
"""
POLICY = parse(POLICY_TEXT)


def between(samples: list[Sample], t0: float, t1: float) -> list[Sample]:
    return [s for s in samples if t0 <= s.got <= t1]


def test_overload_and_imbalance_raised_then_cleared_by_a_move(tmp_path):
    with running_testbed("sharp", "nat", instances=2) as rec:
        name = rec["name"]
        with rig(name, FLOWS) as (gen, sink):
            samples: list[Sample] = []
            events: list[tuple[float, str, str, bool]] = []
            out: dict = {}
            start = time.monotonic()

            def traffic():
                time.sleep(0.3)
                out["traffic_at"] = time.monotonic()
                out["sink"] = measure(gen, sink, RATE, SEND_S, 1.0, before_read=lambda: moved.wait(30))

            def move():
                time.sleep(MOVE_AT)
                out["move_at"] = time.monotonic()
                try:
                    out["move"] = controller.call(name, "POST", "/move", {"src": "nf0", "dst": "nf1",
                                                                          "mechanism": "dist", "guarantee": "lf"})
                finally:
                    out["moved_at"] = time.monotonic()
                    moved.set()

            moved = threading.Event()
            threads = [threading.Thread(target=traffic), threading.Thread(target=move)]
            for t in threads:
                t.start()
            try:
                r = watch.run(name, POLICY, duration=SEND_S + 0.6,
                              on_sample=lambda s, an: samples.append(s),
                              on_event=lambda e: events.append((time.monotonic(), e.kind, e.instance, e.active)))
            finally:
                moved.wait(30)
                for t in threads:
                    t.join(60)

            assert "move" in out, out
            sent = out["sink"]
            # the move itself kept its guarantee: the traffic is whole
            assert sent["lost"] == 0 and sent["duplicated"] == 0, sent
            nf0 = [s for s in samples if s.instance == "nf0"]
            nf1 = [s for s in samples if s.instance == "nf1"]
            # every instance sampled about every 100 ms over the whole watch
            assert len(nf0) >= 0.8 * (SEND_S + 0.6) / 0.1 and len(nf1) >= 0.8 * (SEND_S + 0.6) / 0.1, (len(nf0), len(nf1))

            # before the move: nf0 carries the traffic, nf1 nothing; nf0 holds every flow
            before = (out["traffic_at"] + 0.4, out["move_at"])
            pps0 = statistics.median(s.pps for s in between(nf0, *before))
            pps1 = statistics.median(s.pps for s in between(nf1, *before))
            assert 0.85 * RATE <= pps0 <= 1.15 * RATE, pps0
            assert pps1 < 0.02 * RATE, pps1
            assert between(nf0, *before)[-1].flows == FLOWS
            assert between(nf1, *before)[-1].flows == 0
            if r["run_stats"] == "on":
                assert all(s.cpu_ns and s.cpu_ns > 0 for s in between(nf0, *before)), r["run_stats"]

            raised = {(k, i): t for t, k, i, a in events if a}
            cleared = {(k, i): t for t, k, i, a in events if not a}
            # raised after three samples of the load, before the move
            assert out["traffic_at"] < raised[("overload", "nf0")] < out["move_at"], (events, out)
            assert out["traffic_at"] < raised[("imbalance", "nf0")] < out["move_at"], (events, out)
            assert raised[("overload", "nf0")] - out["traffic_at"] >= 0.2     # not on the first sample
            assert ("overload", "nf1") not in raised or raised[("overload", "nf1")] > out["move_at"]

            # after the move: nf0 idle and empty, its conditions cleared; nf1 carries it all
            after = (out["moved_at"] + 0.5, out["traffic_at"] + SEND_S)
            assert statistics.median(s.pps for s in between(nf0, *after)) < 0.02 * RATE
            assert 0.85 * RATE <= statistics.median(s.pps for s in between(nf1, *after)) <= 1.15 * RATE
            assert nf0[-1].flows == 0 and nf1[-1].flows == FLOWS, (nf0[-1], nf1[-1])
            assert cleared[("overload", "nf0")] > out["move_at"], events
            assert cleared[("imbalance", "nf0")] > out["move_at"], events
            assert raised[("overload", "nf1")] > out["move_at"]
            assert raised[("imbalance", "nf1")] > out["move_at"]
            # the traffic stopped before the watch did: nf1's overload cleared with it, its flows stay
            stop = out["traffic_at"] + SEND_S
            assert ("overload", "nf1") not in cleared or cleared[("overload", "nf1")] > stop, (events, stop)
            assert ("imbalance", "nf1") in {(e["kind"], e["instance"]) for e in r["active"]}
            assert not any(e["instance"] == "nf0" and e["kind"] in ("overload", "imbalance") for e in r["active"])
            assert r["instances"]["nf0"]["pps_max"] >= 0.85 * RATE and r["lost"] == {}
            print(json.dumps({"events": [(round(t - start, 2), k, i, a) for t, k, i, a in events],
                              "timing": {k: round(v - start, 2) for k, v in out.items() if k.endswith("_at")},
                              **{k: r[k] for k in ("run_stats", "process_cpu_s", "process_cpu_share", "instances")}}))

        # the command: idle now, nothing overloaded, both underloaded
        pol = tmp_path / "policy.toml"
        pol.write_text(POLICY_TEXT)
        c = nfx("orchestrate", "watch", "--name", name, "--policy", str(pol), "--duration", "0.8", "--json", timeout=60)
        assert c.returncode == 0, c.stderr
        w = json.loads(c.stdout)
        assert set(w["instances"]) == {"nf0", "nf1"}
        assert all(v["samples"] >= 5 and v["pps_max"] < 100 for v in w["instances"].values()), w["instances"]
        assert {(e["kind"], e["instance"]) for e in w["active"]} == {("underload", "nf0"), ("underload", "nf1"),
                                                                      ("imbalance", "nf1")}
        c = nfx("orchestrate", "watch", "--name", name + "x", "--policy", str(pol), "--duration", "0.5")
        assert c.returncode == 3 and "no testbed" in c.stderr
