"""nfx state export|import|dump|diff and nfx nf start|stop|list end to end (subprocesses, --json),
with their error paths: another layout, not a state file, an unknown instance, a dead agent."""
import os
import time

import pytest

from nfx import layout as L
from nfx.procs import agents
from nfx.agent.client import AgentClient
from nfx.state import ops, wire
from nfx import registry
from nfx.testbed import builder
from tests.netns.tbutil import nfx, nfx_json, running_testbed, unique_name


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2) as rec:
        r = nfx_json("traffic", "run", "--name", rec["name"], "--flows", "300", "--rate", "50000", "--duration", "0.3")
        assert r["lost"] == 0
        yield rec["name"]


def test_export_import_dump_diff(tb, tmp_path):
    f = tmp_path / "nf0.state"
    e = nfx_json("state", "export", "--name", tb, "--instance", "nf0", "-o", str(f))
    assert (e["entries"], e["kind"], e["file"]) == (300 * 3 + 1, "nat", str(f))
    meta, chunks = ops.load(str(f))
    assert meta["instance"] == "nf0" and meta["layout"] == e["layout"] and sum(c.count for c in chunks) == e["entries"]
    d = nfx_json("state", "diff", "--name", tb, str(f), "instance:nf1")
    assert not d["same"] and d["only_a"] == 900
    i = nfx_json("state", "import", "--name", tb, "--instance", "nf1", str(f))
    assert i["failed"] == [] and i["entries"] == e["entries"] and i["applied"] == len(chunks)
    assert nfx_json("state", "diff", "--name", tb, "instance:nf0", "instance:nf1")["same"]
    assert nfx_json("state", "diff", str(f), str(f))["same"]
    # a filtered, scoped export holds just that
    g = tmp_path / "some.state"
    e = nfx_json("state", "export", "--name", tb, "--instance", "nf0", "--filter", "sport=1024-1029",
                 "--scope", "per-flow", "-o", str(g))
    assert e["entries"] == 12 and {c.table for c in ops.load(str(g))[1]} == {"nat_fwd", "nat_rev"}
    dump = nfx_json("state", "dump", "--name", tb, "--instance", "nf1", "--filter", "sport=1024", "--limit", "0")
    t = dump["tables"]
    assert t["nat_fwd"]["count"] == t["nat_rev"]["count"] == t["nat_ports"]["count"] == 1
    [fwd] = t["nat_fwd"]["entries"]
    assert fwd["key"]["sport"] == 1024 and fwd["value"]["peer"] == t["nat_rev"]["entries"][0]["key"]
    assert t["nat_ports"]["entries"][0]["key"]["addr"] == fwd["value"]["peer"]["dst"]
    r = nfx("state", "dump", "--name", tb, "--instance", "nf1", "--scope", "per-flow", "--limit", "2")
    assert r.returncode == 0 and "nat_fwd" in r.stdout and "300 entries" in r.stdout


def _rewrite(src, dst, meta_layout=None, chunk_layout=None):
    meta, chunks = ops.load(str(src))
    if chunk_layout:
        chunks = [wire.Chunk(**{**c.__dict__, "layout": chunk_layout}) for c in chunks]
    ops.save(str(dst), {**meta, "layout": meta_layout or meta["layout"]}, chunks)


def test_import_of_another_layout_is_refused(tb, tmp_path):
    f = tmp_path / "a.state"
    nfx_json("state", "export", "--name", tb, "--instance", "nf0", "-o", str(f))
    before = nfx_json("state", "dump", "--name", tb, "--instance", "nf1", "--limit", "0")
    bad = tmp_path / "old.state"
    _rewrite(f, bad, meta_layout="feedfacefeedface", chunk_layout="feedfacefeedface")
    r = nfx("state", "import", "--name", tb, "--instance", "nf1", str(bad))
    assert r.returncode == 2
    assert "layout feedfacefeedface" in r.stderr and "refusing to import state of another layout" in r.stderr
    # the file says the right layout, its chunks do not: the agent refuses, nothing applied
    sneaky = tmp_path / "sneaky.state"
    _rewrite(f, sneaky, chunk_layout="feedfacefeedface")
    r = nfx("state", "import", "--name", tb, "--instance", "nf1", str(sneaky))
    assert r.returncode == 2 and "refusing" in r.stderr and "nothing was applied" in r.stderr
    assert nfx_json("state", "dump", "--name", tb, "--instance", "nf1", "--limit", "0") == before


def test_cli_error_paths(tb, tmp_path):
    r = nfx("state", "import", "--name", tb, "--instance", "nf1", str(tmp_path / "missing.state"))
    assert r.returncode == 2 and "cannot read state file" in r.stderr
    junk = tmp_path / "junk.state"
    junk.write_bytes(b"hello, not a state file at all" * 10)
    r = nfx("state", "import", "--name", tb, "--instance", "nf1", str(junk))
    assert r.returncode == 2 and "not an nfx frame" in r.stderr
    trunc = tmp_path / "trunc.state"
    nfx_json("state", "export", "--name", tb, "--instance", "nf0", "-o", str(trunc))
    trunc.write_bytes(trunc.read_bytes()[:-40])
    r = nfx("state", "import", "--name", tb, "--instance", "nf1", str(trunc))
    assert r.returncode == 2
    r = nfx("state", "dump", "--name", tb, "--instance", "nf9")
    assert r.returncode == 3 and "no NF instance 'nf9'" in r.stderr and "nf0, nf1" in r.stderr
    r = nfx("state", "export", "--name", tb, "--instance", "nf0", "--filter", "port=80", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown key 'port'" in r.stderr and not (tmp_path / "x").exists()
    r = nfx("state", "dump", "--name", tb, "--instance", "nf0", "--scope", "per-host")
    assert r.returncode == 2 and "unknown scope" in r.stderr
    r = nfx("state", "dump", "--name", unique_name(), "--instance", "nf0")
    assert r.returncode == 3 and "no testbed" in r.stderr


def test_nf_stop_start_list(tb, tmp_path):
    rows = nfx_json("nf", "list", "--name", tb)["instances"]
    assert [(x["instance"], x["agent"]["alive"], x["agent"]["answering"]) for x in rows] == \
        [("nf0", True, True), ("nf1", True, True)]
    old = rows[1]["agent"]["pid"]
    s = nfx_json("nf", "stop", "--name", tb, "--instance", "nf1")["stopped"]
    assert s == [{"instance": "nf1", "pids": [old], "stopped": True, "was_running": True}]
    assert not agents.is_agent(old, tb)
    r = nfx("state", "export", "--name", tb, "--instance", "nf1", "-o", str(tmp_path / "y"))
    assert r.returncode == 3 and "not answering" in r.stderr and f"nfx nf start --name {tb} --instance nf1" in r.stderr
    assert nfx_json("nf", "list", "--name", tb)["instances"][1]["agent"]["alive"] is False
    st = nfx_json("nf", "start", "--name", tb)["started"]        # every instance without an agent
    assert list(st) == ["nf1"] and st["nf1"]["pid"] != old
    r = nfx("nf", "start", "--name", tb, "--instance", "nf1")
    assert r.returncode == 4 and "already runs" in r.stderr
    assert nfx_json("state", "dump", "--name", tb, "--instance", "nf1", "--scope", "all-flows")["tables"]
    log = registry.load(tb)["nodes"]["nf1"]["agent"]["log"]
    assert "listening on" in open(log).read()


def _host_counts(name: str, instance: str) -> dict[int, int]:
    """nat_hosts: mappings per inside address, as the NAT's quota reads them."""
    n, keys, vals = builder.instance(name, instance).maps["nat_hosts"].export()
    return {int(keys[i]): int(vals[i]) for i in range(n) if vals[i]}


def _settled(name, instance, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while (got := _host_counts(name, instance)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_quota_counts_follow_put_and_delete(tb):
    """The NAT's per-host counts follow state transfer: mappings put into an instance count
    against their hosts there; deleted ones stop counting. (Deletes nf0's state: keep it last.)"""
    before = _host_counts(tb, "nf0")
    assert list(before.values()) == [300], before          # one inside host, a mapping per flow
    with AgentClient(tb, "nf0") as src, AgentClient(tb, "nf1") as dst:
        dst.delete()
        assert _settled(tb, "nf1", {}) == {}
        assert dst.put(src.get())["failed"] == []
        assert _settled(tb, "nf1", before) == before      # moved-in mappings count at nf1
        src.delete()
        assert _settled(tb, "nf0", {}) == {}              # deleted ones no longer count at nf0


def test_down_ends_every_agent():
    with running_testbed("chain", "nat") as rec:
        name = rec["name"]
        pids = agents.find(name)
        assert len(pids) == 1 and os.path.exists(f"/proc/{pids[0]}")
        status = builder.status(name)["nodes"]["nf0"]["agent"]
        assert status["alive"] and status["pid"] == pids[0]
    assert agents.find(name) == []
    assert not (agents.AGENT_DIR / name).exists()
