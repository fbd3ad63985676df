"""The SLiM bench's summary of repeated runs (nfx/bench/slim_plot.py): medians of the runs that
finished, the worst of every run's loss and hold, and a point none of whose runs finished."""
from nfx.bench.slim_plot import summary, table


def run(mech, released, lost=0, held=1.0, error=None, nbytes=100):
    # total_s: the cleanup after the release comes on top, and is not the migration's
    total = None if released is None else released + 0.02
    return {"nf": "nat", "size": 1400, "rate_mbit": 900.0, "mechanism": mech, "released_s": released,
            "total_s": total, "lost": lost,
            "error": error, "bytes_total": nbytes, "sigma": 0.03 if mech == "slim" else None,
            "max_added_delay_ms": held, "seconds_of_loss": lost / 1000, "seconds_rtt_over_15ms": 0.0,
            "achieved_pps": 80000}


def test_medians_of_finished_runs_and_worst_of_all():
    rows = [run("slim", 0.08), run("slim", 0.12, lost=5, held=9.0), run("slim", 0.07),
            run("dup", 0.2), run("dup", None, error="rolled back"), run("dup", 0.1)]
    a = summary(rows)
    s, d = a[("nat", 1400, 900.0, "slim")], a[("nat", 1400, 900.0, "dup")]
    assert (s["duration_s"], s["lost"], s["max_added_delay_ms"], s["finished"]) == (0.08, 5, 9.0, 3)
    assert (round(d["duration_s"], 3), d["finished"], d["runs"], d["error"]) == (0.15, 2, 3, None)
    md = table({"rows": rows, "flows": 1000, "repeat": 3})
    line = next(x for x in md.splitlines() if x.startswith("| nat"))
    assert "| 0.080 | 0.150 (2 of 3 finished) | 0.53 |" in line


def test_a_point_with_no_finished_run():
    a = summary([run("dup", None, error="rolled back"), run("dup", None, error="rolled back")])
    d = a[("nat", 1400, 900.0, "dup")]
    assert (d["duration_s"], d["finished"], d["error"]) == (None, 0, "rolled back")
    assert "did not finish" in table({"rows": [run("slim", 0.1), run("dup", None, error="x")], "flows": 1})


def test_results_from_before_released_s_give_their_total():
    old = {k: v for k, v in run("slim", 0.1).items() if k != "released_s"}
    assert summary([old])[("nat", 1400, 900.0, "slim")]["duration_s"] == old["total_s"]
