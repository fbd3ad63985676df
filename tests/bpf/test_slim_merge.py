"""A SLiM destination merges (nfx/agent/slim_merge.py): two IDS instances saw different flows of
the same host; the flows of one move to the other by snapshot and statelets. The moved flows'
entries arrive as they are, and the host's counters add: packets, bytes and flows, the distinct
ports less those both had seen. Real programs, packets by BPF_PROG_TEST_RUN."""
import pytest
from scapy.all import IP, UDP, Ether, raw

from nfx import layout as L
from nfx.filter import parse
from nfx.gate import Gate
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from nfx.nfs.ids import IDS, IdsConfig
from nfx.state import ops
from nfx.state.statelets import StateletReader
from nfx.agent.slim_merge import Merge
from tests.scratch import scratch_nf

HOST = "10.0.1.7"
MOVING = "sport=7000-7009"
SCOPES = ("per-flow", "multi-flow")


@pytest.fixture(scope="module")
def pair():
    with scratch_nf(IDS, "tsa", IdsConfig(), max_flows=4096) as a, scratch_nf(IDS, "tsb", IdsConfig(), max_flows=4096) as b:
        yield a, b


def send(nf, sport: int, dport: int, n: int = 1, size: int = 40) -> None:
    frame = raw(Ether(src="02:00:00:00:0a:aa", dst="02:00:00:00:0b:bb") / IP(src=HOST, dst="10.0.2.2") /
                UDP(sport=sport, dport=dport) / (b"x" * size))
    with netns.enter(nf.ns):
        for _ in range(n):
            prog_test_run(nf.fn.fd, frame, ingress_ifindex=nf.idx["in"])


def host(nf) -> dict:
    [h] = [h for h in nf.hosts() if h["addr"] == HOST]
    return h


def flows(nf, lo: int, hi: int) -> dict:
    return {(f["sport"], f["dport"]): (f["pkts"], f["bytes"]) for f in nf.flows() if lo <= f["sport"] <= hi}


def test_ids_host_counters_add_and_moved_flows_arrive_whole(pair):
    src, dst = pair
    # the destination's own flows of the host: dports 53 and 54
    for sp in range(6000, 6005):
        send(dst, sp, 53 if sp % 2 else 54, n=3)
    own = host(dst)
    # the source's flows of the same host, mirrored from before the snapshot on
    reader = StateletReader(src)
    reader.drain(idle_ms=0)
    Gate(src).set_filter(0, parse("proto=udp"), L.Action.STATELET, tag=1)
    for sp in range(7000, 7010):
        send(src, sp, 53 if sp < 7005 else 55, n=2)
    snap = list(ops.export(src, SCOPES, parse(MOVING)))
    for sp in range(7000, 7010):                  # after the snapshot: only the statelets have these
        send(src, sp, 53, n=4, size=100)
    recs = reader.drain(idle_ms=0)
    Gate(src).clear_filter(0)
    reader.close()
    moved_src, src_host = flows(src, 7000, 7009), host(src)

    m = Merge(dst, SCOPES, parse(MOVING))
    m.install(snap)
    report: dict = {}
    for r in recs:
        m.apply(r, [len(r)], report)
    m.finish()
    assert report["orphans"] == 0 and m.merged >= 1
    assert len(moved_src) == 15 and flows(dst, 7000, 7009) == moved_src      # the moved flows, whole
    h = host(dst)
    assert h["pkts"] == own["pkts"] + src_host["pkts"] == 15 + 60
    assert h["bytes"] == own["bytes"] + src_host["bytes"]
    assert h["flows"] == own["flows"] + src_host["flows"] == 5 + 15
    # ports: dst saw 53, 54; src saw 53, 55 -> 53, 54, 55
    assert (own["dports"], src_host["dports"], h["dports"]) == (2, 2, 3)

