"""The host's share of a bench run (nfx/bench/host.py): steal over all CPU time between two
readings of /proc/stat."""
from nfx.bench import host


def test_steal_is_its_share_of_every_kind_of_cpu_time():
    before = [100, 0, 50, 800, 0, 0, 10, 40, 0, 0]
    after = [160, 0, 80, 900, 0, 0, 20, 140, 0, 0]       # 60 + 30 + 100 + 10 + 100 = 300 ticks, 100 stolen
    assert host.steal_pct(before, after) == 33.3
    assert host.steal_pct(before, before) is None          # no time between them
    assert host.steal_pct(None, after) is None and host.steal_pct(before[:4], after[:4]) is None


def test_this_machine_reports_its_cpu_times():
    t = host.cpu_times()
    assert t is not None and len(t) >= 8 and all(x >= 0 for x in t)
