"""Two testbeds joined as two machines (issue 14, multi-host; nfx/testbed/join.py): a routed link
between their management networks only. Over it each one's controller side reaches the other's
agents, and the other's agents reach an etcd in the first's management network, so `nfx cluster
up --etcd` puts both testbeds' members in one etcd. Unjoin, and testbed down of either, take the
link and every route it added away."""
import json
import socket

import pytest

from nfx import registry
from nfx.agent.client import AgentClient
from nfx.etcd import Etcd
from nfx.etcd.globalstate import GlobalState
from nfx.loader import netns
from nfx.testbed import builder
from tests.netns.tbutil import nfx, running_testbed


@pytest.fixture(scope="module")
def two():
    with running_testbed("sharp", "nat") as a, running_testbed("sharp", "nat", mgmt="10.254.0.0/24") as b:
        yield a["name"], b["name"]


def routes(ns: str) -> str:
    import subprocess
    return subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True).stdout


def test_join_refuses_itself_and_a_joined_testbed(two):
    a, b = two
    r = nfx("testbed", "join", "--name", a, "--peer", a)
    assert r.returncode == 2 and "itself" in r.stderr
    r = nfx("testbed", "join", "--name", a, "--peer", "nosuch")
    assert r.returncode == 3 and "nosuch" in r.stderr


def test_joined_testbeds_reach_each_others_agents_and_share_one_etcd(two):
    a, b = two
    r = nfx("testbed", "join", "--name", a, "--peer", b, "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["mgmt"] == {a: "10.255.0.0/24", b: "10.254.0.0/24"}
    r = nfx("testbed", "join", "--name", b, "--peer", a)
    assert r.returncode == 4 and "joined" in r.stderr        # one join a testbed
    ra, rb = registry.load(a), registry.load(b)
    # A's management side (where its controller talks to agents) reaches B's agent: a request
    node = {"testbed": b, "name": "nf0", "agent_addr": rb["mgmt"]["agents"]["nf0"], "agent_port": rb["nodes"]["nf0"]["agent"]["port"]}
    with AgentClient.for_node(node, rb["token"], ra["mgmt"]["ns"], timeout=10) as c:
        assert c.request("ping")
    # an etcd in A's management network, and B's agents (in their own namespaces) in it
    up = json.loads(nfx("cluster", "up", "--name", a, "--clusters", "nf0,nf1", "--json").stdout)
    try:
        r = nfx("cluster", "up", "--name", b, "--clusters", "nf0,nf1", "--etcd", up["etcd"], "--json")
        assert r.returncode == 0, r.stderr
        try:
            e = Etcd(up["etcd"])
            e.enter = lambda: netns.enter(ra["mgmt"]["ns"])
            assert GlobalState(e, b).members() == {"c0": ["nf0", "nf1"]}
            assert GlobalState(e, a).members() == {"c0": ["nf0", "nf1"]}
        finally:
            assert nfx("cluster", "down", "--name", b).returncode == 0
    finally:
        assert nfx("cluster", "down", "--name", a).returncode == 0
    # B's agents can no more reach A's management network once unjoined
    r = nfx("testbed", "unjoin", "--name", b, "--json")
    assert r.returncode == 0, r.stderr
    assert not registry.load(a).get("join") and not registry.load(b).get("join")
    assert "10.255.0.0/24" not in routes(rb["nodes"]["nf0"]["ns"]) and "join" not in routes(ra["mgmt"]["ns"])
    with netns.enter(rb["nodes"]["nf0"]["ns"]):
        s = socket.socket()
        s.settimeout(1.0)
        with pytest.raises(OSError):
            s.connect((ra["mgmt"]["controller"], 2379))
        s.close()


def test_down_of_one_unjoins_the_other(two):
    a, b = two
    assert nfx("testbed", "join", "--name", a, "--peer", b).returncode == 0
    rb = registry.load(b)
    assert rb["join"]["peer"] == a and "10.255.0.0/24" in routes(rb["nodes"]["nf0"]["ns"])
    builder.down(a)
    rb = registry.load(b)
    assert not rb.get("join") and "10.255.0.0/24" not in routes(rb["nodes"]["nf0"]["ns"])
