"""Instances at runtime (nfx nf add|remove) on a running two-NAT sharp testbed: an add that fails
at a late step leaves nothing behind; an added instance takes every flow by an order-preserving
move under traffic, and gives them back, with nothing lost, duplicated or reordered; its removal
is refused while it holds them and leaves nothing behind once it is empty. A second add after
flows born on the first added instance were moved away does not reuse the slice they hold."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nfx import layout as L, registry
from nfx.loader import attach, netlink, netns
from nfx.control.switch import Switch
from nfx.procs import agents, controller
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import rig
from tests.netns.tbutil import Rigs, nfx, nfx_json, running_testbed, under_traffic

FLOWS, RATE, DURATION, AT = 500, 30000, 1.5, 0.5
RIGS = Rigs()


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2) as rec:
        try:
            yield rec
        finally:
            RIGS.close()


def links(ns: str) -> list[str]:
    with netlink.Netlink(ns) as nl:
        return sorted(l.get_attr("IFLA_IFNAME") for l in nl.ipr.get_links())


def snapshot(name: str) -> dict:
    """Everything an add makes, as the kernel and the record have it: namespaces, links, XDP
    programs, switch roles, every instance's tx devmap and peer config, pins, agents."""
    rec = registry.load(name)
    out = {"record": {k: v for k, v in rec.items() if k != "nat_retired"},
           "netns": sorted(n for n in netns_list() if n.startswith(f"{name}-")),
           "pins": sorted(p.name for p in registry.pin_root(name).iterdir()),
           "agents": sorted(agents.find(name)), "links": {}, "xdp": {}, "roles": {}, "tx": {}, "peer_cfg": {}}
    for node, info in rec["nodes"].items():
        out["links"][node] = links(info["ns"])
        if info["role"] != "host":                 # the hosts' are the traffic rig's
            out["xdp"][node] = sorted(attach.xdp_attachments(info["ns"]))
        if info["role"] == "switch":
            s = Switch.open(node, info["ns"], Path(info["pin"]))
            try:
                out["roles"][node] = s.port_roles()
            finally:
                s.close()
        if info["role"] == "nf":
            nf = builder.instance(name, node)
            try:
                out["tx"][node] = {s: v.value for s in range(L.TX_SLOTS) if (v := nf.maps.nfx_tx.get(L.u32(s)))}
                out["peer_cfg"][node] = list(nf.maps.nfx_port_cfg.get(L.u32(0)).peer_ifindex)
            finally:
                nf.maps.close()
    out["links"]["mg"] = links(rec["mgmt"]["ns"])
    return out


def netns_list() -> list[str]:
    return [l.split()[0] for l in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()]


def held(name: str, inst: str) -> int:
    nf = builder.instance(name, inst)
    try:
        return nf.maps.nat_fwd.export()[0]
    finally:
        nf.maps.close()


def nat_slice(name: str, inst: str) -> tuple[int, int]:
    nf = builder.instance(name, inst)
    try:
        c = nf.config()
        return c.port_lo, c.port_hi
    finally:
        nf.maps.close()


def public_ports(name: str, inst: str) -> set[int]:
    nf = builder.instance(name, inst)
    try:
        n, keys, _ = nf.maps.nat_ports.export()
        return {socket.ntohs(keys[i].port) for i in range(n)}
    finally:
        nf.maps.close()


def move(name, src, dst):
    return controller.call(name, "POST", "/move", {"src": src, "dst": dst, "guarantee": "op", "mechanism": "dist"})


def clean(r) -> bool:
    return not (r["lost"] or r["duplicated"] or r["reordered"] or r["unexpected"])


FAIL = """
import sys
from nfx.nfs.base import NF
from nfx.procs import agents, controller
from nfx.testbed import grow

name, step = sys.argv[1], sys.argv[2]

def boom(*a, **k):
    raise RuntimeError(f"injected failure at {step}")

if step == "agent":
    agents.Held.go = boom
elif step == "peers":           # the second of the other instances' slots toward the new one
    add_peer, calls = NF.add_peer, []
    def second_fails(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            boom()
        return add_peer(self, *a, **k)
    NF.add_peer = second_fails
elif step == "controller":      # the last step: the controller told
    tell, calls = controller.tell_instances, []
    def first_fails(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            boom()
        return tell(*a, **k)
    controller.tell_instances = first_fails
try:
    grow.add(name)
except RuntimeError as e:
    print(e)
    sys.exit(3)
"""


def test_every_instance_s_release_path_is_ready_before_a_move(tb):
    """The release veth runs the NF's own program, and on the tc transport (nfx/loader/
    transmit.py) both its ends carry the kick's MAX_PKT frames from the agent's start, not from a
    move's first hold (set there, the move's hold phase took 56 ms against 6)."""
    from nfx.loader import transmit
    for inst in ("nf0", "nf1"):
        info = registry.load(tb["name"])["nodes"][inst]
        att = attach.xdp_attachments(info["ns"])
        wired = {att[i][0] for i in info["ifaces"].values() if i in att}
        assert wired == {att[builder.RELEASE_IF][0]}, att
        if transmit.mode() == "tc":
            with netlink.Netlink(info["ns"]) as nl:
                mtus = [nl.ipr.get_links(nl.index(i))[0].get_attr("IFLA_MTU")
                        for i in (builder.RELEASE_IF, builder.RELEASE_PEER)]
            assert min(mtus) >= L.MAX_PKT, mtus


@pytest.mark.parametrize("step", ["peers", "agent", "controller"])
def test_an_add_that_fails_late_leaves_nothing(tb, step):
    name = tb["name"]
    before = snapshot(name)
    r = subprocess.run([sys.executable, "-c", FAIL, name, step], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and f"injected failure at {step}" in r.stdout, (r.returncode, r.stdout, r.stderr)
    after = snapshot(name)
    for part in before:
        assert after[part] == before[part], part
    st = controller.call(name, "GET", "/status")
    assert st["instances"] == ["nf0", "nf1"], st


def test_added_instance_takes_flows_and_gives_them_back(tb):
    name = tb["name"]
    before = snapshot(name)
    add = nfx_json("nf", "add", "--name", name, timeout=120)
    print("nf add:", json.dumps({k: add[k] for k in ("instance", "nat_ports", "timings_ms", "program_load_ms")}))
    assert (add["instance"], add["index"], add["tx_slot"], add["kind"]) == ("nf2", 2, 4, "nat")
    lo, hi = add["nat_ports"]
    assert nat_slice(name, "nf2") == (lo, hi)
    for other in ("nf0", "nf1"):                   # the running slices are untouched and never met
        olo, ohi = nat_slice(name, other)
        assert hi < olo or lo > ohi, (other, olo, ohi, lo, hi)
    now = snapshot(name)
    for other in ("nf0", "nf1"):                   # their tx slot 4 and peer config now reach nf2's link
        p2 = netns.ifindex("p2", f"{name}-{other}")
        assert now["tx"][other] == {**before["tx"][other], 4: p2} and now["peer_cfg"][other][4] == p2
        assert "p2" in now["xdp"][other]
    assert set(add["timings_ms"]) >= {"netns_links", "switch", "program_load", "attach_pin", "peers", "agent_spawn",
                                      "agent_ready", "controller", "registry", "total"}
    assert add["program_load_ms"] > 0
    rec = registry.load(name)
    assert rec["nodes"]["nf0"]["peer_slots"]["nf2"] == 4 and rec["nodes"]["nf2"]["peer_slots"] == {"nf0": 2, "nf1": 3}
    assert controller.call(name, "GET", "/status")["instances"] == ["nf0", "nf1", "nf2"]

    gen, sink = RIGS.get(name, FLOWS)
    measure(gen, sink, 20000, 0.5, 1.0)            # every flow has its mapping on nf0
    assert held(name, "nf0") == FLOWS and held(name, "nf2") == 0
    m, r = under_traffic(name, gen, sink, RATE, DURATION, AT, lambda: move(name, "nf0", "nf2"), judged=lambda r, m: clean(r))
    assert clean(r) and r["received"] == r["sent"] > 0, r
    assert held(name, "nf2") == FLOWS and held(name, "nf0") == 0, m
    passed = builder.instance(name, "nf2").stats()
    assert passed.get("v_redirect", 0) > r["sent"] // 4, passed     # the traffic after the move went through nf2

    # it holds every flow and both switches send to it: refused, and nothing changed
    refused = nfx("nf", "remove", "--name", name, "--instance", "nf2", "--json")
    assert refused.returncode == 2 and "not empty" in refused.stderr, refused.stderr
    assert "nf2" in registry.load(name)["nodes"] and held(name, "nf2") == FLOWS

    m, r = under_traffic(name, gen, sink, RATE, DURATION, AT, lambda: move(name, "nf2", "nf0"), judged=lambda r, m: clean(r))
    assert clean(r) and r["received"] == r["sent"] > 0, r
    assert held(name, "nf0") == FLOWS and held(name, "nf2") == 0, m

    rm = nfx_json("nf", "remove", "--name", name, "--instance", "nf2", timeout=60)
    print("nf remove:", json.dumps(rm["timings_ms"]))
    assert not rm["forced"] and rm["held"] == {}
    assert snapshot(name) == before
    assert controller.call(name, "GET", "/status")["instances"] == ["nf0", "nf1"]


def test_a_slice_still_held_is_not_given_again(tb):
    """Flows born on an added instance keep its ports when they move away: once it is removed,
    the next add takes another slice, and a third add, with both free runs held or owned,
    is refused, with nothing made."""
    name = tb["name"]
    first = nfx_json("nf", "add", "--name", name, timeout=120)["nat_ports"]
    move(name, "nf0", "nf2")                     # everything to nf2: new flows are born there
    RIGS.drop(name)
    with rig(name, 100, src_ip="10.0.1.77") as (gen, sink):      # an inside host nf0 never saw
        r = measure(gen, sink, 10000, 0.5, 1.0)
    assert clean(r) and r["received"] == r["sent"] > 0, r
    born = {p for p in public_ports(name, "nf2") if first[0] <= p <= first[1]}
    assert len(born) == 100, (first, sorted(public_ports(name, "nf2"))[:5])
    move(name, "nf2", "nf0")
    assert born <= public_ports(name, "nf0")     # they kept their ports
    nfx_json("nf", "remove", "--name", name, "--instance", "nf2", timeout=60)

    second = nfx_json("nf", "add", "--name", name, timeout=120)
    lo, hi = second["nat_ports"]
    assert hi < first[0] or lo > first[1], (first, second["nat_ports"])
    before = snapshot(name)
    third = nfx("nf", "add", "--name", name, "--json", timeout=120)
    assert third.returncode == 2 and "no free NAT port slice" in third.stderr, third.stderr
    assert snapshot(name) == before
    nfx_json("nf", "remove", "--name", name, "--instance", second["instance"], timeout=60)
