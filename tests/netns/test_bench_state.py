"""nfx bench state, small: the three phases are timed, the baseline and the kernel's own cost an
entry are there, nf1 ends equal to nf0, and the bench's testbed is gone afterwards."""
from nfx.procs import agents
from nfx import registry
from tests.netns.tbutil import nfx_json


def test_bench_state_small():
    r = nfx_json("bench", "state", "--flows", "20000", "--reps", "2", "--sample", "2000", timeout=300)
    assert r["flows"] == 20000 and r["entries"] == 3 * 20000 + 1 and r["max_flows"] == 32768
    for phase in ("export", "transfer", "import", "push_sequential", "push_total"):
        p = r[phase]
        assert p["entries"] == r["entries"] and len(p["runs_s"]) == 2 and p["entries_per_s"] > 0
    assert r["push_total"]["pipelined"] and r["push_total"]["over_slowest_leg"] > 0
    b = r["cpu_bound"]
    assert b["cpus"] >= 1 and b["export_cpu_s"] > 0 and b["import_cpu_s"] > 0 and b["entries_per_s"] > 0
    # the kernel's own cost: every hash entry pushed (the cursor is an array), read and put once
    assert 0 <= r["steal_pct"] <= 100
    f = r["kernel_floor"]
    assert f["entries"] == 3 * 20000 and f["export_us"] > 0 and f["import_us"] > 0
    assert abs(f["entries_per_s"] - f["cpus"] * 1e6 / (f["export_us"] + f["import_us"])) < 1
    for base in ("per_entry_export", "per_entry_import"):
        assert r[base]["sample"] == 2000 and r[base]["entries_per_s"] > 0
    assert r["verify"]["same"] and r["verify"]["tables"]["nat_fwd"] == {"a": 20000, "b": 20000, "same": True}
    assert not registry.path(r["testbed"]).exists() and agents.find(r["testbed"]) == []
