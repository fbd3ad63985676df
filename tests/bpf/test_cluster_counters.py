"""An IDS instance's all-flows counters (ids_global, ids_sig_hits), read through the state export
and published to a real etcd (LocalEtcd): what the global state merges equals the sum of what the
instance's maps held at each publish, read the other way (per-CPU lookups)."""
import pytest
from scapy.all import IP, UDP, Ether, Raw, raw

from nfx.etcd.globalstate import GlobalState
from nfx.agent.global_counters import instance_counters, publish_instance_counters
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from nfx.nfs.ids import IDS, IdsConfig
from tests.scratch import scratch_nf
from tests.unit.etcd_fixture import etcd, local_etcd  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def ids():
    with scratch_nf(IDS, "tcc", IdsConfig(), max_flows=64) as inst:
        yield inst


def send(ids, n, payload, sport0):
    with netns.enter(ids.ns):
        for i in range(n):
            f = Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src="10.0.1.2", dst="10.0.2.2") / \
                UDP(sport=sport0 + i, dport=80) / Raw(payload)
            v, _, _ = prog_test_run(ids.fn.fd, raw(f), ingress_ifindex=ids.idx["in"])
            assert v != 0                                        # never XDP_ABORTED


def test_published_counters_merge_to_the_sum(ids, etcd):
    ids.reset()
    ids.add_signature(7, b"GET")
    ids.add_signature(9, b"admin")
    gs = GlobalState(etcd, "tbc")
    snaps = []
    for name, n, payload, sport0 in (("nf0", 5, b"admin", 1000), ("nf1", 3, b"GET /", 2000)):
        ids.reset()
        send(ids, n, payload, sport0)
        published = publish_instance_counters(etcd, "tbc", name, ids)
        direct = {"ids_global": ids.global_counters(), "ids_sig_hits": {str(k): v for k, v in ids.sig_hits().items()}}
        assert published == direct == instance_counters(ids)
        assert published["ids_global"]["pkts"] == n
        snaps.append(direct)
    merged = gs.merged_counters("ids_global")
    assert merged == {k: snaps[0]["ids_global"][k] + snaps[1]["ids_global"][k] for k in snaps[0]["ids_global"]}
    assert merged["pkts"] == 8 and merged["flows"] == 8
    assert gs.merged_counters("ids_sig_hits") == {"7": 3, "9": 5}
