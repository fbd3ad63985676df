"""`nfx bench dataplane`'s pure parts (no root): what each requested frame size is measured as and
which are refused, the options' parsing and refusals (before anything is built), and the ratio
arithmetic of a size's block."""
import os
import subprocess
import sys

import pytest

from nfx.bench import dataplane as dp
from nfx.cli.bench_dataplane import parse_sizes, pinned_cpu
from nfx.errors import BadInput
from nfx.traffic.gen import min_size

SMALLEST = min_size("udp")


def test_default_size_is_the_smallest_frame():
    assert dp.frame_sizes(None) == dp.frame_sizes([]) == [{"requested_bytes": None, "frame_bytes": SMALLEST}]


def test_sizes_below_the_generators_smallest_are_measured_at_it():
    assert dp.frame_sizes([64, 1514]) == [{"requested_bytes": 64, "frame_bytes": SMALLEST},
                                          {"requested_bytes": 1514, "frame_bytes": 1514}]
    assert dp.frame_sizes([SMALLEST + 1]) == [{"requested_bytes": SMALLEST + 1, "frame_bytes": SMALLEST + 1}]


@pytest.mark.parametrize("sizes,match", [([59], "outside"), ([1515], "outside"), ([0], "outside"),
                                         ([64, SMALLEST], "both be measured"), ([128, 128], "both be measured")])
def test_bad_sizes_refused(sizes, match):
    with pytest.raises(BadInput, match=match):
        dp.frame_sizes(sizes)


def test_parse_sizes():
    assert parse_sizes(None, None) is None
    assert parse_sizes(128, None) == [128]
    assert parse_sizes(None, "64, 1514") == [64, 1514]
    for size, sizes in ((128, "64"), (None, ","), (None, "64,big")):
        with pytest.raises(BadInput):
            parse_sizes(size, sizes)


def test_pinned_cpu():
    assert pinned_cpu(False, None) is None
    assert pinned_cpu(True, None) == max(os.sched_getaffinity(0))
    assert pinned_cpu(False, 0) == 0 and pinned_cpu(True, 0) == 0


@pytest.mark.parametrize("flows,duration,reps,cpu", [(0, 1.0, 1, None), (10, 0.0, 1, None), (10, 1.0, 0, None),
                                                     (10, 1.0, 1, max(os.sched_getaffinity(0)) + 1)])
def test_bad_args_refused(flows, duration, reps, cpu):
    with pytest.raises(BadInput):
        dp.check_args(flows, duration, reps, cpu)
    dp.check_args(10, 0.5, 1, min(os.sched_getaffinity(0)))         # and a good set passes


@pytest.mark.parametrize("args,says", [(["--sizes", "10"], "outside"), (["--size", "100", "--sizes", "64"], "not both"),
                                       (["--reps", "0"], "--reps"), (["--pin-cpu", "4096"], "CPU 4096"),
                                       (["--sizes", "64,66"], "both be measured")])
def test_cli_refuses_before_building(args, says):
    """Exit 2 (bad input) and the reason on stderr; checked before root, so nothing is built."""
    r = subprocess.run([sys.executable, "-m", "nfx", "bench", "dataplane", *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "testbed" not in r.stderr


def test_ratios():
    pps = {"xdp_forward": 4.0e6, "xdp_nat": 3.0e6, "xdp_ids": 2.0e6, "nft_masquerade": 0.5e6, "kernel_forward": 1.0e6}
    r = dp.ratios(pps)
    assert r == {"ratio_nat_over_xdp_forward": 0.75, "ratio_ids_over_xdp_forward": 0.5, "ratio_xdp_over_nft": 6.0,
                 "ratio_ids_over_nft": 4.0, "ratio_xdp_forward_over_nft": 8.0, "ratio_xdp_over_kernel_forward": 3.0}
    # a path that moved nothing as the denominator: no ratio; as the numerator: 0
    r = dp.ratios({**pps, "nft_masquerade": 0.0, "xdp_ids": 0.0})
    assert r["ratio_xdp_over_nft"] is None and r["ratio_ids_over_xdp_forward"] == 0.0
    assert dp.ratios({"xdp_nat": 1.0})["ratio_nat_over_xdp_forward"] is None        # a path not measured


def _run(received: int, elapsed: float = 1.0, lost: int = 0) -> dict:
    return {"received": received, "elapsed_s": elapsed, "pps": received / elapsed, "lost": lost, "redirected": received}


def test_summarise_medians_and_per_rep_ratios():
    runs = {"xdp_forward": [_run(400), _run(600, 2.0), _run(500)],          # 400, 300, 500 pps
            "xdp_nat": [_run(200), _run(300), _run(360)],
            "xdp_ids": [_run(100), _run(150), _run(200)],
            "nft_masquerade": [_run(50), _run(100, lost=3), _run(60)],
            "kernel_forward": [_run(80), _run(90), _run(100)]}
    b = dp.summarise(runs)
    assert b["results"]["xdp_forward"]["rx_pps_median"] == 400
    assert b["results"]["xdp_forward"]["rx_pps_runs"] == [400, 300, 500]
    assert b["results"]["nft_masquerade"]["lost_runs"] == [0, 3, 0]
    # the block's ratios are of the medians (300 / 400, 300 / 60), not medians of the per-rep ratios
    assert b["ratio_nat_over_xdp_forward"] == 0.75 and b["ratio_xdp_over_nft"] == 5.0
    assert b["ratio_ids_over_xdp_forward"] == 150 / 400
    assert b["ratio_runs"]["ratio_nat_over_xdp_forward"] == [0.5, 1.0, 0.72]
    assert b["ratio_runs"]["ratio_xdp_over_nft"] == [4.0, 3.0, 6.0]


def test_traffic_is_loop_or_send():
    dp.check_args(10, 0.5, 1, None, "loop")
    dp.check_args(10, 0.5, 1, None, "send")
    with pytest.raises(BadInput, match="loop or send"):
        dp.check_args(10, 0.5, 1, None, "live")


def test_cli_refuses_a_bad_traffic():
    r = subprocess.run([sys.executable, "-m", "nfx", "bench", "dataplane", "--traffic", "x"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "loop or send" in r.stderr, r.stderr


def test_loop_builds_and_refusals():
    """The loop's sink and generator are builds of their own (no clock, a redirect); a sink does one
    thing with a generator packet; a loop's generator needs its end and one sender (refused before
    anything is compiled)."""
    from nfx.traffic.gen import Generator, gen_defines
    from nfx.traffic.sink import Sink, sink_defines
    assert sink_defines(4, 1, loop=True)["NFX_SINK_LOOP"] == 1 and "NFX_SINK_LOOP" not in sink_defines(4, 1)
    assert gen_defines(4, timed=False)["NFX_GEN_UNTIMED"] == 1 and "NFX_GEN_UNTIMED" not in gen_defines(4)
    for kw in ({"echo": True}, {"pass_gen": True}):
        with pytest.raises(BadInput, match="one of those"):
            Sink(None, None, 4, loop_if="lp1", **kw)
    for attach_if, cpus in ((None, 1), ("lp0", 2)):
        with pytest.raises(BadInput, match="loop's generator"):
            Generator(None, attach_if, "eth0", src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02",
                      src_ip="10.0.0.1", dst_ip="10.0.0.2", nflows=4, cpus=cpus, loop_from=("h2", "lp1"))
