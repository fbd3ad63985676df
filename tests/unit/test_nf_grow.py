"""nfx nf add|remove without root: where a new instance goes (index, tx slot, name, agent address,
wiring), the NAT port slice it gets, and every refusal an add or a remove meets before anything
is touched, through the functions and through the CLI's exit codes."""
import copy
import ipaddress
import json
import subprocess
import sys

import pytest

from nfx import errors as E, registry
from nfx.testbed import grow, shrink, slots

# a built two-instance sharp testbed's record, trimmed to what planning reads
RECORD = {
    "name": "tbx", "status": "up", "topology": "sharp", "nf": "nat", "instances": 2, "token": "ab" * 16,
    "max_flows": 65536,
    "created": {"netns": ["tbx-h1", "tbx-h2", "tbx-si", "tbx-so", "tbx-nf0", "tbx-nf1", "tbx-mg"],
                "nf": ["nf0", "nf1"], "switch": ["si", "so"]},
    "nodes": {
        "h1": {"role": "host", "ns": "tbx-h1", "ifaces": {"si": "eth0"}, "mac": "02:00:0a:00:01:02", "gen_if": "gen0"},
        "h2": {"role": "host", "ns": "tbx-h2", "ifaces": {"so": "eth0"}, "mac": "02:00:0a:00:02:02"},
        "si": {"role": "switch", "ns": "tbx-si", "ifaces": {"h1": "h1", "nf0": "nf0", "nf1": "nf1"},
               "pin": "/sys/fs/bpf/nfx/tbx/si", "ports": ["h1", "nf0", "nf1"]},
        "so": {"role": "switch", "ns": "tbx-so", "ifaces": {"nf0": "nf0", "nf1": "nf1", "h2": "h2"},
               "pin": "/sys/fs/bpf/nfx/tbx/so", "ports": ["nf0", "nf1", "h2"]},
        "nf0": {"role": "nf", "ns": "tbx-nf0", "ifaces": {"si": "si", "so": "so"}, "kind": "nat",
                "pin": "/sys/fs/bpf/nfx/tbx/nf0", "wiring": ["si", "so"], "index": 0, "release_if": "rl0",
                "peer_slots": {"nf1": 3}},
        "nf1": {"role": "nf", "ns": "tbx-nf1", "ifaces": {"si": "si", "so": "so"}, "kind": "nat",
                "pin": "/sys/fs/bpf/nfx/tbx/nf1", "wiring": ["si", "so"], "index": 1, "release_if": "rl0",
                "peer_slots": {"nf0": 2}},
    },
    "mgmt": {"ns": "tbx-mg", "bridge": "br0", "controller": "10.255.0.254", "net": "10.255.0.0/24",
             "agents": {"nf0": "10.255.0.11", "nf1": "10.255.0.12"}},
}


def rec(**changes):
    r = registry.Testbed(copy.deepcopy(RECORD))
    r.update(changes)
    return r


def with_instances(n: int) -> registry.Testbed:
    r = rec()
    for i in range(2, n):
        r["nodes"][f"nf{i}"] = dict(copy.deepcopy(RECORD["nodes"]["nf1"]), ns=f"tbx-nf{i}", index=i)
    return r


# ---- where it goes ----
def test_the_next_instance_takes_the_lowest_free_index_and_its_name():
    p = slots.plan(rec())
    assert (p.name, p.index, p.slot, p.template, p.ns) == ("nf2", 2, 4, "nf0", "tbx-nf2")
    assert p.switches == ["si", "so"] and p.peers == {"nf0": 0, "nf1": 1}
    assert p.agent_addr == "10.255.0.13"


def test_a_freed_index_is_taken_again_and_a_name_may_be_given():
    r = with_instances(4)
    del r["nodes"]["nf1"]                       # removed: index 1 is free, nf1 too
    p = slots.plan(r)
    assert (p.name, p.index, p.slot) == ("nf1", 1, 3)
    q = slots.plan(r, "edge7")
    assert (q.name, q.index, q.ns) == ("edge7", 1, "tbx-edge7")


def test_the_default_name_skips_names_in_use():
    r = rec()
    r["nodes"]["nf2"] = {"role": "host", "ns": "tbx-nf2", "ifaces": {}}     # a node, not an instance
    assert slots.plan(r).name == "nf3"


def added(r, p: slots.Plan) -> None:
    r["nodes"][p.name] = dict(copy.deepcopy(RECORD["nodes"]["nf1"]), ns=p.ns, index=p.index)


def with_gaps():
    r = with_instances(6)
    del r["nodes"]["nf1"], r["nodes"]["nf3"]
    return r


def with_a_host_named_nf3():
    r = rec()
    r["nodes"]["nf3"] = {"role": "host", "ns": "tbx-nf3", "ifaces": {}}
    return r


def with_a_renamed_instance():
    r = with_instances(4)
    r["nodes"]["edge7"] = dict(r["nodes"].pop("nf1"), ns="tbx-edge7")     # index 1 under another name
    del r["nodes"]["nf2"]
    return r


@pytest.mark.parametrize("make", [rec, lambda: with_instances(5), with_gaps, with_a_host_named_nf3,
                                  with_a_renamed_instance])
def test_free_names_are_the_names_the_next_adds_get(make):
    r = make()
    names = slots.free_names(r, 4)
    for want in names:
        p = slots.plan(r)
        assert p.name == want
        added(r, p)
    assert len(names) == 4


def test_free_names_examples():
    assert slots.free_names(rec(), 3) == ["nf2", "nf3", "nf4"]
    r = with_instances(4)
    del r["nodes"]["nf1"]
    assert slots.free_names(r, 3) == ["nf1", "nf4", "nf5"]
    r["nodes"]["nf5"] = {"role": "host", "ns": "tbx-nf5", "ifaces": {}}     # a node, not an instance
    assert slots.free_names(r, 3) == ["nf1", "nf4", "nf6"]
    assert slots.free_names(r, 0) == []


def test_free_names_stop_where_the_indexes_do():
    r = with_instances(slots.PEER_SLOTS - 2)
    assert slots.free_names(r, 5) == ["nf12", "nf13"]
    assert slots.free_names(with_instances(slots.PEER_SLOTS), 5) == []


def test_management_macs_follow_the_address():
    assert slots.mgmt_mac("10.255.0.13") == "02:6d:0a:ff:00:0d"
    assert slots.mgmt_mac("10.255.0.13") != slots.mgmt_mac("10.255.0.14")


def test_agent_addresses_are_the_builders():
    net = ipaddress.IPv4Network("10.255.0.0/24")
    hosts = list(net.hosts())
    assert [slots.agent_addr(str(net), i) for i in range(14)] == [str(hosts[10 + i]) for i in range(14)]
    with pytest.raises(E.BadInput, match="no address left"):
        slots.agent_addr("10.255.0.0/28", 3)     # 14 hosts: agents from the 11th, the last the controller's


def test_fourteen_instances_fill_every_peer_slot_of_the_tx_devmap():
    r = with_instances(slots.PEER_SLOTS)
    with pytest.raises(E.BadInput, match="tx devmap"):
        slots.plan(r)
    del r["nodes"]["nf13"]
    assert slots.plan(r).slot == 15              # the last slot of 16


# ---- refusals ----
@pytest.mark.parametrize("name", ["Nf2", "2nf", "nf-2", "toolongname", "", "mg", "trunk", "rl0"])
def test_bad_names_are_refused(name):
    with pytest.raises(E.BadInput, match="bad instance name"):
        slots.plan(rec(), name)


@pytest.mark.parametrize("name", ["nf1", "si", "h2"])
def test_a_name_in_use_is_already_there(name):
    with pytest.raises(E.AlreadyExists):
        slots.plan(rec(), name)


@pytest.mark.parametrize("change,match", [
    ({"status": "building"}, "not up"),
    ({"join": {"peer": "tby"}}, "joined to tby"),
    ({"sharing": {"clusters": {"c0": ["nf0", "nf1"]}}}, "runs clusters"),
    ({"cluster": {"local_etcd": {}}}, "runs clusters"),
])
def test_a_testbed_that_cannot_change_refuses_both(change, match):
    with pytest.raises(E.BadInput, match=match):
        slots.plan(rec(**change))
    with pytest.raises(E.BadInput, match=match):
        slots.check_removable(rec(**change), "nf1")


def test_instances_not_between_switches_cannot_grow():
    r = rec()
    r["nodes"]["nf0"]["ifaces"] = {"h1": "eth0", "h2": "eth1"}       # chain: h1 - nf0 - h2
    del r["nodes"]["nf1"]
    with pytest.raises(E.BadInput, match="not wired between switches"):
        slots.plan(r)


def test_remove_refuses_unknown_and_topology_bound_instances():
    with pytest.raises(E.NotFound, match="no NF instance 'si'"):
        slots.check_removable(rec(), "si")
    with pytest.raises(E.BadInput, match="cluster c0"):
        slots.check_removable(rec(clusters={"c0": ["nf0", "nf1"]}), "nf1")
    with pytest.raises(E.BadInput, match="failover pair"):
        slots.check_removable(rec(pairs={"nf0": "nf1"}), "nf1")
    with pytest.raises(E.BadInput, match="failover pair"):
        slots.check_removable(rec(spares=["nf1"]), "nf1")
    slots.check_removable(rec(), "nf1")


# ---- the NAT port slice ----
def test_an_added_nat_takes_ports_outside_the_build_range():
    build = [(20000, 39999), (40000, 59999)]          # 2 instances of NatConfig's 20000-59999
    assert slots.free_slice(build, 20000) == (1024, 19999)          # the widest run: narrower than asked
    assert slots.free_slice(build + [(1024, 19999)], 20000) == (60000, 65535)
    assert slots.free_slice(build + [(1024, 19999), (60000, 65535)], 20000) is None


def test_a_run_wide_enough_gives_exactly_the_width_asked_from_its_start():
    assert slots.free_slice([(20000, 29999)], 5000) == (1024, 6023)
    assert slots.free_slice([(1024, 1999), (20000, 29999)], 5000) == (2000, 6999)
    assert slots.free_slice([(1024, 65535)], 1) is None
    assert slots.free_slice([], 100) == (1024, 1123)


def test_a_slice_never_meets_a_taken_port():
    import random
    rnd = random.Random(7)
    for _ in range(500):
        taken = []
        for _ in range(rnd.randint(0, 6)):
            lo = rnd.randint(1, 65535)
            taken.append((lo, min(65535, lo + rnd.randint(0, 15000))))
        want = rnd.randint(1, 30000)
        got = slots.free_slice(taken, want)
        if got is None:
            continue
        lo, hi = got
        assert slots.PORT_FLOOR <= lo <= hi <= slots.PORT_CEIL
        assert hi - lo + 1 == want or hi - lo + 1 >= slots.MIN_SLICE
        assert not any(a <= hi and lo <= b for a, b in taken), (taken, got)


def test_too_narrow_a_run_is_no_slice():
    assert slots.free_slice([(1024 + slots.MIN_SLICE - 1, 65535)], 5000) is None
    assert slots.free_slice([(1024 + slots.MIN_SLICE, 65535)], 5000) == (1024, 1024 + slots.MIN_SLICE - 1)
    with pytest.raises(E.BadInput):
        slots.free_slice([], 0)


# ---- through the functions and the CLI, on a record in a temporary registry ----
@pytest.fixture
def regdir(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "DIR", tmp_path)
    monkeypatch.setattr(registry, "pin_root", lambda name: tmp_path / "pins" / name)
    (tmp_path / "tbx.json").write_text(json.dumps(RECORD))
    (tmp_path / "pins" / "tbx").mkdir(parents=True)
    return tmp_path


def test_one_change_at_a_time(regdir):
    with shrink.one_change("tbx"):
        with pytest.raises(E.BadInput, match="another nfx nf add or remove is running"):
            with shrink.one_change("tbx"):
                pass
        with pytest.raises(E.BadInput, match="another nfx nf add or remove"):
            grow.add("tbx")
    with shrink.one_change("tbx"):              # released
        pass
    (regdir / "pins" / "tbx").rmdir()
    with pytest.raises(E.NotFound, match="has no pins"):
        grow.add("tbx")


def test_add_and_remove_refuse_before_touching_anything(regdir):
    before = (regdir / "tbx.json").read_text()
    with pytest.raises(E.AlreadyExists):
        grow.add("tbx", "nf0")
    with pytest.raises(E.BadInput, match="bad instance name"):
        grow.add("tbx", "NF9")
    with pytest.raises(E.NotFound, match="no NF instance 'nf7'"):
        shrink.remove("tbx", "nf7")
    with pytest.raises(E.NotFound, match="no testbed 'tby'"):
        grow.add("tby")
    assert (regdir / "tbx.json").read_text() == before


CLI = """
import sys
from nfx import registry, cli
from nfx.cli import nf
registry.DIR = __import__("pathlib").Path(sys.argv[1])
registry.pin_root = lambda name: registry.DIR / "pins" / name
nf.need_root = lambda: None
sys.argv = ["nfx", "nf", *sys.argv[2:]]
cli.main()
"""


@pytest.mark.parametrize("args,code,says", [
    (["add", "--name", "tbx", "--instance", "nf1"], 4, "has a node 'nf1' already"),
    (["add", "--name", "tbx", "--instance", "Bad!"], 2, "bad instance name"),
    (["add", "--name", "tby"], 3, "no testbed 'tby'"),
    (["add", "--name", "BAD"], 2, "bad testbed name"),
    (["remove", "--name", "tbx", "--instance", "nf9"], 3, "no NF instance 'nf9'"),
    (["remove", "--name", "tbx"], 2, "Missing option"),
])
def test_cli_refusals_and_their_exit_codes(regdir, args, code, says):
    r = subprocess.run([sys.executable, "-c", CLI, str(regdir), *args], capture_output=True, text=True)
    assert r.returncode == code, r.stderr
    assert says in r.stderr


@pytest.mark.parametrize("cmd", ["add", "remove"])
def test_help(cmd):
    r = subprocess.run([sys.executable, "-m", "nfx", "nf", cmd, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--json" in r.stdout and "--name" in r.stdout
