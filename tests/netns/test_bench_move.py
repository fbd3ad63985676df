"""nfx bench move, tiny: one rate, 100 flows, LF with both mechanisms. The JSON and the CSV hold
the same measured runs (nothing hard-coded: state bytes, chunks, move time and the sink's counts
come from the move and the traffic), LF lost and duplicated nothing, and the bench's testbed is
gone afterwards. Plus the pure helpers: the matrix, the 95% CI, the source addressing."""
import csv
import json
import ipaddress
import os
import subprocess

import pytest

from nfx.procs import agents
from nfx.bench import move as bm
from nfx.bench import move_bed, move_cells
from nfx.bench import table1 as t1
from nfx.errors import BadInput
from nfx.nfs.nat import pool_hash
from nfx import registry
from tests.netns.tbutil import nfx_json

RATE, FLOWS, DURATION = 20000, 100, 1.5


def test_bench_move_tiny(tmp_path):
    path = tmp_path / "sub" / "move.csv"          # the folder is made
    r = nfx_json("bench", "move", "--mechanisms", "dist,opennf", "--guarantees", "lf", "--opts", "pz",
                 "--rates", str(RATE), "--flows", str(FLOWS), "--duration", str(DURATION), "--at", "0.6",
                 # 5 ms each way keeps the flows held for at least two of them: without it the
                 # window is about a millisecond, and a pause of the generator's can leave it empty
                 "--ctrl-delay-ms", "5", "--csv", str(path), timeout=300)
    assert r["mode"] == "matrix" and r["cells"] == 2 and len(r["runs"]) == 2 and r["csv"] == str(path)
    assert r["violations"] == [], json.dumps(r["violations"])
    for run in r["runs"]:
        assert run["guarantee"] == "lf" and run["opts"] == "pz" and run["ok"] and run["verdict"] == "ok", run
        assert run["sent"] == RATE * DURATION and run["received"] == run["sent"]
        assert (run["lost"], run["duplicated"]) == (0, 0)
        assert run["states"] == 2 * FLOWS                      # nat_fwd + nat_rev per connection
        assert run["state_chunks"] >= 2 and run["state_bytes"] > run["states"] * 16
        assert 0 < run["move_time_s"] < run["total_s"] < 10
        assert 0 <= run["serialization_share"] < 1
        assert run["move_inside_traffic"] and run["lat_p50_us"] > 0
        assert run["nf_drops"] == ""
        assert 0 <= run["steal_pct"] <= 100                 # the host's share, beside every run
    by = {x["mechanism"]: x for x in r["runs"]}
    # at 200 pps per flow, packets of the held flows reach the source during the move
    assert by["opennf"]["controller_packets"] > 0 and by["opennf"]["instance_buffer_peak"] == 0
    assert by["dist"]["controller_packets"] == 0 and by["dist"]["packets_redirected"] > 0
    rows = list(csv.DictReader(path.open()))
    assert [x["mechanism"] for x in rows] == [x["mechanism"] for x in r["runs"]]
    for row, run in zip(rows, r["runs"]):
        assert int(row["sent"]) == run["sent"] and int(row["state_bytes"]) == run["state_bytes"]
        assert float(row["steal_pct"]) == run["steal_pct"]
        assert float(row["move_time_s"]) == pytest.approx(run["move_time_s"], rel=1e-5)
    assert len(r["summary"]) == 2 and all(s["n"] == 1 and s["ok"] for s in r["summary"])
    assert r["aborted"] == [] and len(r["testbeds"]) == 1          # one testbed per flow count
    name = r["testbeds"][0]
    assert not registry.path(name).exists() and agents.find(name) == []
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith(name + "-")]
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, name)]


def _cmdline_has(pid: str, word: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return word.encode() in f.read()
    except OSError:
        return False


def test_bench_move_table1_smoke(tmp_path):
    """--table1 with one run per config and no added delay: 1100 connections = 2200 states, the
    combined (de)serialisation share split in two, the ratio per optimisation set, the paper's rows."""
    r = nfx_json("bench", "move", "--table1", "--repeat", "1", "--ctrl-delay-ms", "0", "--duration", "0.5",
                 "--at", "0.2", "--csv", str(tmp_path / "t1.csv"), timeout=300)
    n = len(t1.TABLE1_CONFIGS)
    assert r["mode"] == "table1" and r["rate_pps"] == 1000 and len(r["runs"]) == n and r["violations"] == []
    for run in r["runs"]:
        assert run["states"] == 2 * t1.TABLE1_CONNECTIONS and run["sent"] == 500 and run["lost"] == 0
        assert run["ser_share"] > 0 and run["deser_share"] > 0
        assert run["ser_share"] + run["deser_share"] == pytest.approx(run["serialization_share"])
    # DiST as published, and with nfx's ov, dt and both, against OpenNF
    assert {(x["opts"], x["dist_opts"]) for x in r["ratios"]} == {
        (b, b + x) for b in ("pz", "pz,ll,er") for x in ("", ",ov", ",dt", ",ov,dt")}
    # the paper's data link between the instances, on every run
    assert r["data_link"] == [1.0, 100.0] and all((x["data_delay_ms"], x["data_rate_mbit"]) == (1.0, 100.0)
                                                  for x in r["runs"])
    assert all(x["opennf_over_dist"] > 0 for x in r["ratios"])
    assert [p["config"] for p in r["paper"]][0] == "OpenNF LF PZ" and r["paper"][1]["move_time_s"] == [0.51, 0.06]
    assert len(list(csv.DictReader((tmp_path / "t1.csv").open()))) == n
    assert r["aborted"] == [] and not registry.path(r["testbeds"][0]).exists()


def test_matrix_and_stats_helpers():
    c = bm.cells(("opennf", "dist"), ("ng", "lf", "op"), bm.OPTS, (1000,), (100,), (0.0,))
    assert len(c) == 2 * (2 + 3 + 3)                               # ng runs without ll/er
    assert move_cells.parse_opts_list(["none;pz", "pz|ll|er", "er,pz,ll"]) == ["none", "pz", "pz,ll,er"]
    # dt: dist only, and not op; ng keeps it (it moves the forwarding update), drops ll/er
    dt = move_cells.parse_opts_list(["dt,pz", "pz|ll|er|dt"])
    assert dt == ["pz,dt", "pz,ll,er,dt"]
    c = bm.cells(("opennf", "dist"), ("ng", "lf", "op"), dt, (1000,), (100,), (0.0,))
    assert {(x["mechanism"], x["guarantee"], x["opts"]) for x in c} == {
        ("dist", "ng", "pz,dt"), ("dist", "lf", "pz,dt"), ("dist", "lf", "pz,ll,er,dt")}
    # ov: dist only, and not ng (only a destination that holds the flows may get them early)
    ov = move_cells.parse_opts_list(["ov", "pz,ov,dt"])
    assert ov == ["ov", "pz,ov,dt"]
    c = bm.cells(("opennf", "dist"), ("ng", "lf", "op"), ov, (1000,), (100,), (0.0,))
    assert {(x["mechanism"], x["guarantee"], x["opts"]) for x in c} == {
        ("dist", "lf", "ov"), ("dist", "op", "ov"), ("dist", "lf", "pz,ov,dt")}
    # pc: dist only, lf and op, and only beside pz,ll,er
    pc = move_cells.parse_opts_list(["pc,er,ll,pz", "pz,pc"])
    assert pc == ["pz,ll,er,pc", "pz,pc"]
    c = bm.cells(("opennf", "dist"), ("ng", "lf", "op"), pc, (1000,), (100,), (0.0,))
    assert {(x["mechanism"], x["guarantee"], x["opts"]) for x in c} == {
        ("dist", "lf", "pz,ll,er,pc"), ("dist", "op", "pz,ll,er,pc")}
    with pytest.raises(BadInput):
        move_cells.parse_opts_list(["zz"])
    with pytest.raises(BadInput):
        bm.cells(("x",), ("lf",), ("none",), (1000,), (100,), (0.0,))
    m, ci = bm.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and ci == pytest.approx(4.303 * 1.0 / 3 ** 0.5)
    assert bm.mean_ci([5.0]) == (5.0, None) and bm.mean_ci([]) == (None, None)
    assert bm.judge("op", {"lost": 0, "duplicated": 0, "reordered": 1})[0] is False
    assert bm.judge("lf", {"lost": 0, "duplicated": 0, "reordered": 1})[0] is True


def test_addressing_keeps_each_public_address_within_its_ports():
    span = 40000
    assert move_bed.addressing(10000, "10.0.1.2", "10.0.1.0/24", 4, span) == ("10.0.1.2", 10000)
    first, fpa = move_bed.addressing(100000, "10.0.1.2", "10.0.1.0/24", 4, span)
    k = -(-100000 // fpa)
    addrs = [int(ipaddress.IPv4Address(first)) + i for i in range(k)]
    assert fpa <= span * move_bed.PORT_USE and len({pool_hash(a) % 4 for a in addrs}) == k
    assert all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network("10.0.1.0/24") for a in addrs)
    with pytest.raises(BadInput):
        move_bed.addressing(200000, "10.0.1.2", "10.0.1.0/24", 4, span)


def test_bench_soak_small():
    """nfx bench soak, small: one OP, one LF and one NG run of moves, back and forth; the sink's
    counts are per run of one guarantee, and every move is accounted for."""
    from nfx.bench import soak
    n = sum(len(seg) for seg in soak.plan())     # one cycle: every valid (mechanism, options) per guarantee
    r = nfx_json("bench", "soak", "--moves", str(n), "--flows", "200", "--rate", "20000", timeout=600)
    assert r["mode"] == "soak" and r["moves"] == n and len(r["runs"]) == n
    assert r["done"] + r["refused"] + r["failed"] == n
    assert r["ok"] and r["done"] == n and r["misplaced"] == r["empty"] == 0, r["errors"]
    assert [s["guarantee"] for s in r["segments"]] == ["op", "lf", "ng"]
    assert sum(s["moves"] for s in r["segments"]) == n
    # the moves alternate between the instances, and every kind ran
    assert all(a["dst"] == b["src"] for a, b in zip(r["runs"], r["runs"][1:]))
    assert {(x["mechanism"], x["guarantee"], x["opts"]) for x in r["runs"]} >= {
        ("dist", "op", "ov"), ("dist", "lf", "dt"), ("opennf", "op", "pz,ll,er"), ("dist", "ng", "dt")}
    op = r["by_guarantee"]["op"]
    assert op["sent"] > 0 and (op["lost"], op["duplicated"], op["reordered"]) == (0, 0, 0)
    assert not registry.path(r["testbed"]).exists()
