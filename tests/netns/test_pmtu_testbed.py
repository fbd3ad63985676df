"""Path-MTU discovery across an NF, end to end. The chain testbed (h1 -> nf0 -> h2) gets a third
host h3 behind h2, which becomes a kernel router whose link to h3 has an MTU of 1200. A
`ping -M do -s 1400` from h1 to h3 makes h2 answer with an ICMP frag-needed error addressed to
the packet's source: through the NAT that is the public address, and the NAT must translate
the error back to h1; through the IDS (no translation) the error must simply not be dropped.
h1's ping reports the MTU and h1's kernel caches it for h3."""
import re

import pytest

from nfx.loader import netns
from nfx import registry
from nfx.testbed import builder
from tests.netns.tbutil import nfx_json, running_testbed, sh

MTU = 1200
H3 = "10.0.3.2"


def add_router_hop(tb) -> str:
    """h2 forwards to a new host h3 over a link of MTU `MTU`; returns h3's netns. The netns is
    registered with the testbed first, so taking the testbed down removes it."""
    name = tb["name"]
    h2, h3 = tb["nodes"]["h2"]["ns"], builder.ns_name(name, "h3")
    rec = registry.load(name)
    rec.register("netns", h3)
    rec.save()
    netns.add(h3)
    netns.ip("link", "add", "r0", "netns", h2, "type", "veth", "peer", "name", "eth0", "netns", h3)
    netns.ip("addr", "add", "10.0.3.1/24", "dev", "r0", ns=h2)
    netns.ip("link", "set", "r0", "mtu", str(MTU), "up", ns=h2)
    sh(h2, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    netns.ip("addr", "add", f"{H3}/24", "dev", "eth0", ns=h3)
    netns.ip("link", "set", "eth0", "mtu", str(MTU), "up", ns=h3)
    netns.ip("link", "set", "lo", "up", ns=h3)
    netns.ip("route", "add", "default", "via", "10.0.3.1", ns=h3)
    return h3


@pytest.mark.parametrize("kind,counter", [("nat", "r_nat_icmp_err"), ("ids", "r_ids_uninspected")])
def test_frag_needed_reaches_h1(kind, counter):
    with running_testbed("chain", kind) as tb:
        add_router_hop(tb)
        h1 = tb["nodes"]["h1"]["ns"]
        # the path works for packets that fit
        r = sh(h1, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1100", H3, check=False)
        assert " 0% packet loss" in r.stdout, r.stdout + r.stderr
        before = builder.instance(tb["name"], "nf0").stats()
        r = sh(h1, "ping", "-c", "3", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1400", H3, check=False)
        text = r.stdout + r.stderr
        # iputils prints "Frag needed and DF set (mtu = 1200)" for the error itself and
        # "message too long, mtu=1200" once the kernel has cached the path MTU
        assert re.search(rf"mtu ?= ?{MTU}\b", text), text
        route = sh(h1, "ip", "route", "get", H3).stdout
        assert f"mtu {MTU}" in route, route
        after = builder.instance(tb["name"], "nf0").stats()
        assert after.get(counter, 0) > before.get(counter, 0), after
        assert after.get("v_aborted", 0) == 0
        if kind == "nat":
            # the error made no mapping of its own: only the pings' echo flows are there
            assert all(m["proto"] == "icmp" for m in builder.instance(tb["name"], "nf0").mappings())
        else:
            cli = nfx_json("nf", "stats", "--name", tb["name"], "--instance", "nf0")
            assert cli["stats"]["r_ids_uninspected"] == after["r_ids_uninspected"]
            assert set(cli["evicted"]) == {"ids_flows", "ids_hosts", "ids_hostports"}


def test_ids_told_to_drop_uninspected_blocks_the_error():
    """`nfx testbed up --nf-set drop_uninspected=true` reaches the IDS: the same error is dropped."""
    with running_testbed("chain", "ids", nf_set=("drop_uninspected=true",)) as tb:
        add_router_hop(tb)
        h1 = tb["nodes"]["h1"]["ns"]
        assert builder.instance(tb["name"], "nf0").config().drop_uninspected == 1
        r = sh(h1, "ping", "-c", "2", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1400", H3, check=False)
        assert not re.search(rf"mtu ?= ?{MTU}\b", r.stdout + r.stderr), r.stdout
        s = builder.instance(tb["name"], "nf0").stats()
        assert s.get("r_ids_uninspected", 0) >= 1 and s.get("r_icmp_not_echo", 0) >= 1
