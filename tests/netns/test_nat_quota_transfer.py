"""The NAT's per-host quota counts follow state transfer: mappings put into an instance count
against their hosts there, and mappings deleted from an instance stop counting against them."""
import time

from nfx.agent.client import AgentClient
from nfx.testbed import builder
from tests.netns.tbutil import nfx_json, running_testbed

FLOWS = 200


def _host_counts(name: str, instance: str) -> dict[int, int]:
    nf = builder.instance(name, instance)
    n, keys, vals = nf.maps["nat_hosts"].export()
    return {int(keys[i]): int(vals[i]) for i in range(n) if vals[i]}


def _settled(name, instance, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while (got := _host_counts(name, instance)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_quota_counts_follow_put_and_delete():
    with running_testbed("sharp", "nat", instances=2, nf_set=("host_quota=1000",)) as rec:
        name = rec["name"]
        r = nfx_json("traffic", "run", "--name", name, "--flows", str(FLOWS), "--rate", "20000", "--duration", "0.2")
        assert r["lost"] == 0
        before = _host_counts(name, "nf0")
        assert list(before.values()) == [FLOWS], before        # one inside host, a mapping per flow
        assert _host_counts(name, "nf1") == {}
        with AgentClient(name, "nf0") as src, AgentClient(name, "nf1") as dst:
            assert dst.put(src.get())["failed"] == []
            assert _settled(name, "nf1", before) == before      # moved-in mappings count at nf1
            src.delete()
            assert _settled(name, "nf0", {}) == {}              # deleted ones no longer count at nf0
