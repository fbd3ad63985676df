"""A testbed with 2 queues a veth (nfx testbed up --queues 2; sharp, 1 NAT instance): both ends
of every data-plane veth have 2 rx and 2 tx queues enabled, and with one sender per CPU (rig's
default there) the NAT forwards every packet, in order, while its per-CPU counters show it
processed packets on both CPUs, each CPU through its own rx queue (a frame redirected into a
veth lands in rx queue = sending CPU % queues; one NAPI per queue). The switches forward skbs
(tc): XPS on their ports keeps each CPU's traffic in its own queue there too (without it a flow
took two queues after the switch and arrived reordered)."""
import os
import re

import pytest

from nfx import layout as L
from nfx.testbed import builder
from nfx.testbed.builder import instance
from nfx.traffic.report import measure
from nfx.traffic.rig import rig

from .tbutil import running_testbed, sh

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")


def channels(ns: str, dev: str) -> tuple[int, int]:
    out = sh(ns, "ethtool", "-l", dev).stdout
    cur = out.split("Current hardware settings:")[1]
    return int(re.search(r"RX:\s*(\d+)", cur).group(1)), int(re.search(r"TX:\s*(\d+)", cur).group(1))


def rxq_xdp_packets(ns: str, dev: str) -> list[int]:
    out = sh(ns, "ethtool", "-S", dev).stdout
    found = dict((int(q), int(n)) for q, n in re.findall(r"rx_queue_(\d+)_xdp_packets:\s*(\d+)", out))
    return [found[q] for q in sorted(found)]


def test_two_queues_process_on_both_cpus():
    with running_testbed("sharp", "nat", instances=1, queues=2) as rec:
        name = rec["name"]
        assert rec["queues"] == 2
        assert builder.status(name)["queues"] == 2          # what nfx testbed status shows
        nodes = rec["nodes"]
        for node, peer in (("h1", "si"), ("si", "h1"), ("si", "nf0"), ("nf0", "si"), ("nf0", "so"), ("so", "nf0"),
                           ("so", "h2"), ("h2", "so")):
            dev = nodes[node]["ifaces"][peer]
            assert channels(nodes[node]["ns"], dev) == (2, 2), f"{node}/{dev}"
        nf = instance(name, "nf0")
        inside = nodes["nf0"]["ifaces"]["si"]
        with rig(name, 64) as (gen, sink):
            assert gen.cpus == 2
            done0 = list(nf.maps.nfx_stats.get(L.u32(L.Stat.V_REDIRECT)))
            q0 = rxq_xdp_packets(nodes["nf0"]["ns"], inside)
            r = measure(gen, sink, 100_000, 0.5)
            done = [b - a for a, b in zip(done0, nf.maps.nfx_stats.get(L.u32(L.Stat.V_REDIRECT)))]
            q = [b - a for a, b in zip(q0, rxq_xdp_packets(nodes["nf0"]["ns"], inside))]
        assert r["sent"] == 50_000 and r["lost"] == 0 and r["reordered"] == 0 and r["clean"], r
        assert nf.stats().get("r_nat_new", 0) >= 64          # every flow got a NAT mapping
        assert sum(done) == r["sent"] and all(n > 0 for n in done[:2]), done
        assert len(q) == 2 and all(n > 0 for n in q) and sum(q) == r["sent"], q
