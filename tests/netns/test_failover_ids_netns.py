"""An IDS primary killed under 100k pps (issue 14): its secondary carries on with every flow's
counters short by at most S_batch - 1 packets (the batches it missed), and the hosts' counters
and the flow count come along."""
import json
import time

import pytest

from nfx.bench import failover as F
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.test_failover_netns import BATCH, FLOWS, LATE_BOUND, counts, short_by, under_traffic
from tests.netns.tbutil import nfx, running_testbed


@pytest.fixture(scope="module")
def tb():
    with running_testbed("pair", "ids", hold_slots=256) as rec:
        with rig(rec["name"], FLOWS) as sides:
            yield rec, sides


def test_a_killed_ids_primary_fails_over_with_counters_at_most_a_batch_behind(tb):
    rec, (gen, sink) = tb
    name = rec["name"]
    r = nfx("cluster", "up", "--name", name, "--batch", str(BATCH), "--misses", "4", "--json")
    assert r.returncode == 0, r.stderr
    measure(gen, sink, 50_000, 0.5, 0.5)
    time.sleep(0.5)
    base = counts(name, "nf0")
    assert len(base) == FLOWS

    def kill():
        t0 = time.time()
        t_kill = F.kill_instance(name, "nf0")
        return t_kill, F.wait_failed_over(name, "nf0", t0)
    (t_kill, ev), tl, r = under_traffic(name, gen, sink, kill)
    assert ev["outcome"] == "failed over" and ev["promoted"] == "nf1", ev
    gap = tl.gap_after(t_kill)
    assert gap["recovery_ms"] is not None and gap["recovery_ms"] < 100, (gap, ev)
    drift = short_by(counts(name, "nf1"), base, gen, sink)
    assert len(drift) == FLOWS and 0 <= min(drift) and max(drift) <= LATE_BOUND, sorted(drift)
    [host] = builder.instance(name, "nf1").hosts()
    assert host["flows"] == FLOWS
    d = json.loads(nfx("cluster", "down", "--name", name, "--json").stdout)
    assert d["failover"]["on"] is False
