"""The testbed registry (no root): the JSON file as the builder writes it, read back through the
typed views, the errors a caller gets for a missing testbed or instance, and the old module name."""
import json
import stat
from pathlib import Path

import pytest

from nfx import errors as E
from nfx import registry
from nfx import registry

# a built two-instance sharp testbed's record, trimmed to what the views read
RECORD = {
    "name": "tbx", "status": "up", "topology": "sharp", "nf": "nat", "instances": 2, "token": "ab" * 16,
    "created": {"netns": ["tbx-h1", "tbx-si", "tbx-nf0", "tbx-nf1", "tbx-mg"], "nf": ["nf0", "nf1"], "switch": ["si"]},
    "nodes": {
        "h1": {"role": "host", "ns": "tbx-h1", "ifaces": {"si": "eth0"}, "addr": "10.0.1.2/24",
               "mac": "02:aa:00:00:00:01", "ifname": "eth0", "gen_if": "gen0"},
        "h2": {"role": "host", "ns": "tbx-h2", "ifaces": {"so": "eth0"}, "addr": "10.0.2.2/24",
               "mac": "02:aa:00:00:00:02", "ifname": "eth0"},
        "si": {"role": "switch", "ns": "tbx-si", "ifaces": {"h1": "h1", "nf0": "nf0", "nf1": "nf1"},
               "pin": "/sys/fs/bpf/nfx/tbx/si", "ports": ["h1", "nf0", "nf1"]},
        "so": {"role": "switch", "ns": "tbx-so", "ifaces": {"h2": "h2"}},           # not built yet: no pin
        "nf0": {"role": "nf", "ns": "tbx-nf0", "ifaces": {"si": "si", "so": "so"}, "kind": "nat",
                "pin": "/sys/fs/bpf/nfx/tbx/nf0", "wiring": ["si", "so"], "index": 0, "release_if": "rl0",
                "peer_slots": {"nf1": 3}, "agent": {"pid": 4242, "log": "/run/nfx/agents/tbx/nf0.log",
                                                    "addr": "10.255.0.11", "port": 7701}},
        "nf1": {"role": "nf", "ns": "tbx-nf1", "ifaces": {"si": "si", "so": "so"}, "kind": "nat",
                "pin": "/sys/fs/bpf/nfx/tbx/nf1", "wiring": ["si", "so"], "index": 1, "release_if": "rl0",
                "peer_slots": {"nf0": 2}},
        "nf2": {"role": "nf", "ns": "tbx-nf2", "ifaces": {}},                          # never built
    },
    "mgmt": {"ns": "tbx-mg", "bridge": "br0", "controller": "10.255.0.254",
             "agents": {"nf0": "10.255.0.11", "nf1": "10.255.0.12"}},
}


@pytest.fixture
def regdir(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "DIR", tmp_path)
    (tmp_path / "tbx.json").write_text(json.dumps(RECORD))
    return tmp_path


def test_load_gives_the_record_and_its_views(regdir):
    tb = registry.Testbed.load("tbx")
    assert dict(tb) == RECORD and tb.name == "tbx" and tb.token == "ab" * 16
    assert tb.instances() == ["nf0", "nf1", "nf2"]
    assert tb.mgmt == registry.Mgmt("tbx-mg", "br0", "10.255.0.254", {"nf0": "10.255.0.11", "nf1": "10.255.0.12"})


def test_nf_node_reads_every_field_the_callers_use(regdir):
    tb = registry.Testbed.load("tbx")
    n0 = tb.nf("nf0")
    assert (n0.testbed, n0.name, n0.ns, n0.kind, n0.pin) == ("tbx", "nf0", "tbx-nf0", "nat", Path("/sys/fs/bpf/nfx/tbx/nf0"))
    assert (n0.wiring, n0.release_if, n0.index, n0.peer_slots) == (("si", "so"), "rl0", 0, {"nf1": 3})
    assert (n0.agent_addr, n0.agent_port, n0.agent_pid, n0.agent_log) == \
        ("10.255.0.11", 7701, 4242, "/run/nfx/agents/tbx/nf0.log")
    n1 = tb.nf("nf1")          # no agent entry yet: the default port, no pid
    assert (n1.index, n1.agent_addr, n1.agent_port, n1.agent_pid) == (1, "10.255.0.12", registry.AGENT_PORT, None)
    with pytest.raises(AttributeError):
        n1.ns = "elsewhere"    # frozen: a view, not a way to change the record


def test_nf_refuses_unknown_and_unbuilt_instances(regdir):
    tb = registry.Testbed.load("tbx")
    with pytest.raises(E.NotFound, match="no NF instance 'h1' in testbed tbx") as e:
        tb.nf("h1")
    assert e.value.hint == "instances: nf0, nf1, nf2"
    with pytest.raises(E.NotFound, match="never built"):
        tb.nf("nf2")


def test_switches_and_hosts(regdir):
    tb = registry.Testbed.load("tbx")
    assert tb.switches() == [registry.SwitchNode("si", "tbx-si", Path("/sys/fs/bpf/nfx/tbx/si"), ("h1", "nf0", "nf1"),
                                                 {"h1": "h1", "nf0": "nf0", "nf1": "nf1"})]
    h1, h2 = tb.hosts()
    assert (h1.name, h1.ns, h1.addr, h1.mac, h1.ifname, h1.gen_if) == \
        ("h1", "tbx-h1", "10.0.1.2/24", "02:aa:00:00:00:01", "eth0", "gen0")
    assert h2.gen_if is None and h2.ifaces == {"so": "eth0"}


def test_a_half_built_record_has_no_mgmt_yet(regdir):
    r = registry.new("half", topology="sharp")
    assert r.mgmt is None and r.instances() == [] and r["status"] == "building"
    with pytest.raises(E.AlreadyExists):
        registry.new("half")


def test_save_is_root_only_and_round_trips(regdir):
    tb = registry.Testbed.load("tbx")
    tb.register("pin", "/sys/fs/bpf/nfx/tbx/stub")
    assert stat.S_IMODE((regdir / "tbx.json").stat().st_mode) == 0o600
    again = registry.load("tbx")
    assert again["created"]["pin"] == ["/sys/fs/bpf/nfx/tbx/stub"] and again == tb
    assert registry.names() == ["tbx"]
    registry.remove("tbx")
    assert registry.names() == []


def test_missing_testbed_and_bad_names(regdir):
    with pytest.raises(E.NotFound, match="no testbed 'nope'"):
        registry.Testbed.load("nope")
    for bad in ("Tb", "1tb", "toolongname", "a-b"):
        with pytest.raises(E.BadInput):
            registry.load(bad)
