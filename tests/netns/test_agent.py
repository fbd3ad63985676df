"""Agents (nfx/agent): one per NF instance, serving state over the management network.

Round trips of every scope for NAT and IDS, peer-to-peer push, refusals (layout, token, bad
chunks, malformed frames) that change nothing and never end the agent, marks and filters that
the gate obeys, event streams, and an agent killed with -9 and restarted under traffic."""
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from nfx import layout as L
from nfx.procs import agents
from nfx.agent.client import AgentClient
from nfx.errors import AgentDown, BadInput, Refused
from nfx.loader import netns
from nfx.state import ops, wire
from nfx.state.tables import SCOPES
from nfx import registry
from nfx.testbed import builder
from nfx.traffic import rig
from tests.netns.tbutil import nfx, nfx_json, py, running_testbed


@pytest.fixture(scope="module")
def nat():
    with running_testbed("sharp", "nat", instances=2) as rec:
        r = rig.run(rec["name"], 200, 50000, 0.4)
        assert r["lost"] == 0
        yield rec


@pytest.fixture(scope="module")
def ids():
    with running_testbed("sharp", "ids", instances=2) as rec:
        r = rig.run(rec["name"], 100, 50000, 0.2)
        assert r["lost"] == 0
        yield rec


def client(rec, inst, **kw) -> AgentClient:
    return AgentClient(rec["name"], inst, **kw)


def same(a, b) -> bool:
    return ops.diff(a, b)["same"]


def clear(rec, inst):
    with client(rec, inst) as c:
        c.delete()


# ---- raw protocol access -------------------------------------------------------------------
class Raw:
    """A bare socket to an agent, from the management netns, for requests the client never sends."""

    def __init__(self, rec, inst):
        with netns.enter(rec["mgmt"]["ns"]):
            self.s = socket.socket()
        self.s.settimeout(10)
        self.s.connect((rec["mgmt"]["agents"][inst], 7700))
        self.r = wire.Reader(self.s)
        self.token = rec["token"]

    def send(self, parts):
        wire.write(self.s, parts)

    def req(self, **obj):
        self.send(wire.encode_json(obj))
        return self.r.frame()

    def close(self):
        self.s.close()


def ping_ok(raw: Raw) -> bool:
    kind, obj = raw.req(op="ping", token=raw.token)
    return kind == wire.JSON and obj["ok"]


# ---- lifecycle and info ----------------------------------------------------------------------
def test_agents_up_with_the_testbed(nat):
    rec = registry.load(nat["name"])
    assert len(rec["token"]) == 32
    assert stat.S_IMODE(os.stat(registry.path(nat["name"])).st_mode) == 0o600
    for inst in ("nf0", "nf1"):
        pid = rec["nodes"][inst]["agent"]["pid"]
        assert agents.is_agent(pid, nat["name"], inst)
        with client(nat, inst) as c:
            i = c.info(entries=True)
        assert (i["instance"], i["kind"], i["pid"], i["layout"]) == (inst, "nat", pid, L.layout_hash("nat"))
        assert i["ns"] == rec["nodes"][inst]["ns"] and i["prog_pinned"]
        assert all(i["xdp"].values()), i["xdp"]            # the program it re-adopted is attached
        assert i["maps"]["nat_fwd"]["max_entries"] == 65536
    with client(nat, "nf0") as c:
        assert c.info(entries=True)["maps"]["nat_fwd"]["entries"] == 200
        assert c.stats()["r_nat_new"] == 200


# ---- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", SCOPES)
def test_nat_round_trip_by_scope(nat, scope):
    clear(nat, "nf1")
    with client(nat, "nf0") as a, client(nat, "nf1") as b:
        got = a.get([scope])
        assert {c.scope for c in got} == {scope}
        expect = {"per-flow": {"nat_fwd": 200, "nat_rev": 200}, "multi-flow": {"nat_ports": 200},
                  "all-flows": {"nat_cursor": 1}}[scope]
        assert {c.table: c.count for c in got} == expect
        rep = b.put(got)
        assert rep["failed"] == [] and rep["entries"] == sum(expect.values())
        assert same(got, b.get([scope]))
        assert same(a.get([scope]), b.get([scope]))


def test_nat_filter_selects_both_directions_and_ports(nat):
    clear(nat, "nf1")
    with client(nat, "nf0") as a, client(nat, "nf1") as b:
        got = a.get(filter="proto=udp sport=1024-1033")
        counts = {c.table: c.count for c in got}
        assert counts["nat_fwd"] == counts["nat_rev"] == counts["nat_ports"] == 10
        b.put(got)
        assert same(b.get(("per-flow", "multi-flow")), [c for c in got if c.scope != "all-flows"])
        d = b.delete(("per-flow",), "sport=1024-1028")
        assert d["deleted"] == {"nat_fwd": 5, "nat_rev": 5}
        assert {c.table: c.count for c in b.get(("per-flow",))} == {"nat_fwd": 5, "nat_rev": 5}


def test_export_by_keyset_and_skip(nat):
    """Late locking reads a group of flows (keyset) and then the flows it has not seen (skip):
    per-flow tables by the flow key, NAT's nat_rev by the inside flow in its value."""
    from nfx import packets as pk
    nf = builder.instance(nat["name"], "nf0")
    def picked(**kw):
        chunks = list(ops.export(nf, ("per-flow",), **kw))
        fwd = pk.flow_keys([c for c in chunks if c.table == "nat_fwd"])[0]
        return {c.table: c.count for c in chunks}, {bytes(k) for k in fwd}
    _, inside = picked()
    assert len(inside) == 200
    group = set(sorted(inside)[:50])
    counts, keys = picked(keyset=group)
    assert counts == {"nat_fwd": 50, "nat_rev": 50} and keys == group
    counts, keys = picked(skip=group)
    assert counts == {"nat_fwd": 150, "nat_rev": 150} and keys == inside - group
    with pytest.raises(ValueError):
        picked(keyset=group, skip=group)
    counts, _ = picked(names=("nat_rev",))           # one table of the scope: an export thread's share
    assert counts == {"nat_rev": 200}


@pytest.mark.parametrize("scope", SCOPES)
def test_ids_round_trip_by_scope(ids, scope):
    clear(ids, "nf1")
    with client(ids, "nf0") as a, client(ids, "nf1") as b:
        got = a.get([scope])
        tables = {c.table for c in got}
        assert tables == {"per-flow": {"ids_flows"}, "multi-flow": {"ids_hosts", "ids_hostports"},
                          "all-flows": {"ids_global", "ids_sig_hits"}}[scope]
        assert sum(c.count for c in got) > 0
        if scope == "per-flow":
            assert sum(c.count for c in got) == 100
        b.put(got)
        assert same(got, b.get([scope]))


@pytest.mark.parametrize("pipelined", [True, False])
def test_push_peer_to_peer(nat, pipelined):
    clear(nat, "nf1")
    with client(nat, "nf0") as a, client(nat, "nf1") as b:
        r = a.push("nf1", filter="sport=1024-1073", pipelined=pipelined)
        assert r["failed"] == [] and r["to"] == "nf1" and r["pipelined"] is pipelined
        assert r["imported"] == r["entries"] == 50 * 3 + 1
        for k in ("export_s", "transfer_s", "import_s", "total_s", "export_cpu_s", "import_cpu_s"):
            assert r[k] >= 0
        assert same(a.get(filter="sport=1024-1073"), b.get())
        with pytest.raises(BadInput, match="is this instance"):
            a.push("nf0")


def _altered(c: wire.Chunk) -> wire.Chunk:
    """The chunk with the last byte of every value flipped: the same keys, other values."""
    v = bytearray(c.values)
    slot = c.value_size * c.ncpu
    for i in range(c.count):
        v[(i + 1) * slot - 1] ^= 0xFF
    return wire.Chunk(c.table, c.scope, c.kind, c.count, c.key_size, c.value_size, c.ncpu, c.layout,
                      bytes(c.keys), bytes(v), c.seq)


@pytest.mark.parametrize("how", ["bad frame", "stream closed"])
def test_a_streamed_put_broken_off_takes_back_what_it_applied(nat, how):
    """nf1 holds 50 flows' entries; a streamed put brings all 200 (the 50 with other values),
    then breaks off: nf1 is left exactly as it was (the 150 new keys gone, the 50 old values
    back), and the agent goes on serving."""
    clear(nat, "nf1")
    with client(nat, "nf0") as a, client(nat, "nf1") as b:
        b.put(a.get(("per-flow",), filter="sport=1024-1073"))
        before = b.get()
        chunks = a.get(("per-flow",))
    assert sum(c.count for c in before if c.scope == "per-flow") == 100 and sum(c.count for c in chunks) == 400
    raw = Raw(nat, "nf1")
    try:
        raw.send(wire.encode_json({"op": "put", "token": raw.token, "stream": True}))
        for c in chunks:
            raw.send(wire.encode_chunk(_altered(c)))
        if how == "bad frame":
            raw.send(wire.encode_json({"op": "ping"}))
            raw.send(wire.encode_json({}, wire.END))
            kind, obj = raw.r.frame()
            assert kind == wire.ERROR and "expected CHUNK or END" in obj["error"], obj
            assert "taken back (300 entries removed, 100 restored)" in obj["error"], obj
            assert ping_ok(raw)
        else:
            raw.s.shutdown(socket.SHUT_WR)
            assert raw.r.frame() is None     # the agent ends the connection once it took all back
    finally:
        raw.close()
    with client(nat, "nf1") as b:
        assert same(b.get(), before)
        assert b.ping()["ok"]


def test_export_chunks_follow_the_kernels_batches(nat):
    """Chunks leave as the kernel's batches come (never over chunk_entries); the small first
    batches of a table leave as one chunk; the state is the same whatever the size."""
    with client(nat, "nf0") as a:
        whole = a.get(("per-flow",))
        small = a.get(("per-flow",), chunk_entries=64)
        one = a.get(("per-flow",), filter="sport=1030")
    assert [(c.table, c.count) for c in whole] == [("nat_fwd", 200), ("nat_rev", 200)]
    assert all(0 < c.count <= 64 for c in small) and len(small) >= 8
    assert {t: sum(c.count for c in small if c.table == t) for t in ("nat_fwd", "nat_rev")} == \
        {"nat_fwd": 200, "nat_rev": 200}
    assert same(whole, small)
    assert [(c.table, c.count) for c in one] == [("nat_fwd", 1), ("nat_rev", 1)]


def test_a_streamed_put_applies_every_chunk(nat):
    clear(nat, "nf1")
    with client(nat, "nf0") as a, client(nat, "nf1") as b:
        got = a.get()
        r = b.put(got, stream=True)
        assert r["failed"] == [] and r["entries"] == sum(c.count for c in got) and r["apply_cpu_s"] >= 0
        assert same(got, b.get())


def test_push_to_a_dead_peer_says_so(nat):
    with client(nat, "nf0") as a:
        rec = registry.load(nat["name"])
        agents.stop(rec, "nf1")
        try:
            with pytest.raises(AgentDown, match="push to nf1.*not answering"):
                a.push("nf1")
            assert a.ping()["ok"]                 # the pushing agent is fine
        finally:
            agents.start(registry.load(nat["name"]), "nf1")


# ---- refusals -----------------------------------------------------------------------------------
def test_layout_mismatch_refused_nothing_changed(nat):
    clear(nat, "nf1")
    with client(nat, "nf0") as a, client(nat, "nf1") as b:
        got = a.get()
        before = b.get()
        bad = [wire.Chunk(**{**c.__dict__, "layout": "0123456789abcdef"}) if i == 2 else c
               for i, c in enumerate(got)]
        with pytest.raises(BadInput, match="layout 0123456789abcdef.*refusing.*nothing was applied"):
            b.put(bad)
        assert same(before, b.get())
        # another NF kind, another table, entries of another size: refused the same way
        c = got[0]
        for damaged, msg in ((wire.Chunk(**{**c.__dict__, "kind": "ids"}), "holds ids state"),
                             (wire.Chunk(**{**c.__dict__, "table": "nope"}), "not a state table"),
                             (wire.Chunk(c.table, c.scope, c.kind, c.count, 8, c.value_size, c.ncpu, c.layout,
                                         bytes(8 * c.count), bytes(c.values), c.seq), "8\\+56 bytes.*refusing")):
            with pytest.raises(BadInput, match=msg):
                b.put(got[:1] + [damaged])
            assert same(before, b.get())
        assert b.ping()["ok"]


def test_token_missing_or_wrong_is_refused(nat):
    raw = Raw(nat, "nf0")
    try:
        kind, obj = raw.req(op="ping")
        assert kind == wire.ERROR and obj["type"] == "Refused" and "no token" in obj["error"]
        kind, obj = raw.req(op="del", token="0" * 32)
        assert kind == wire.ERROR and obj["type"] == "Refused" and "wrong token" in obj["error"]
        # a refused put: its chunks are skipped, the connection stays in step
        with client(nat, "nf0") as a:
            chunks = a.get(("per-flow",))
        raw.send(wire.encode_json({"op": "put", "token": "nope"}))
        for c in chunks:
            raw.send(wire.encode_chunk(c))
        raw.send(wire.encode_json({"chunks": len(chunks)}, wire.END))
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and obj["type"] == "Refused" and obj["op"] == "put"
        assert ping_ok(raw)
    finally:
        raw.close()
    with client(nat, "nf0") as a:
        assert a.info(entries=True)["maps"]["nat_fwd"]["entries"] == 200    # the del did nothing
    with pytest.raises(Refused, match="wrong token") as e:
        client(nat, "nf0", token="f" * 32).stats()
    assert e.value.exit_code == 9


def test_malformed_frames_refused_agent_lives(nat):
    pid = client(nat, "nf0").ping()["pid"]
    raw = Raw(nat, "nf0")
    try:
        tok = raw.token
        # not JSON / not an object / a CHUNK where a request belongs / unknown op / bad args
        raw.send([wire.HDR.pack(wire.MAGIC, wire.VERSION, wire.JSON, 0, 5), b"{nope"])
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and "malformed" in obj["error"]
        raw.send([wire.HDR.pack(wire.MAGIC, wire.VERSION, wire.JSON, 0, 6), b"[1, 2]"])
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and "must hold an object" in obj["error"]
        raw.send([wire.HDR.pack(wire.MAGIC, wire.VERSION, wire.CHUNK, 0, 4), b"\0\0\0\0"])
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and "expected a JSON request" in obj["error"]
        for req, msg in (({"op": "explode"}, "unknown op 'explode'"),
                         ({"op": 7}, "unknown op 7"),
                         ({"op": "get", "filter": "proto=tcp bogus=1"}, "unknown key 'bogus'"),
                         ({"op": "get", "filter": "src=300.1.1.1"}, "not an IPv4"),
                         ({"op": "get", "scopes": ["per-host"]}, "unknown scope"),
                         ({"op": "get", "chunk_entries": 0}, "chunk_entries"),
                         ({"op": "mark", "action": "teleport", "flows": []}, "unknown action"),
                         ({"op": "mark", "flows": [{"src": "10.0.1.2"}]}, "lacks"),
                         ({"op": "filter", "slot": 99, "action": "drop"}, "slot"),
                         ({"op": "filter", "slot": 0, "filter": "sport=1-9", "action": "drop"}, "range"),
                         ({"op": "subscribe", "streams": ["nonsense"]}, "no stream"),
                         ({"op": "push"}, "needs 'to'")):
            kind, obj = raw.req(token=tok, **req)
            assert kind == wire.ERROR and msg in obj["error"], (req, obj)
            assert obj["code"] == 2
        # a request over the size limit is skipped unread
        big = 2 << 20
        raw.send([wire.HDR.pack(wire.MAGIC, wire.VERSION, wire.JSON, 0, big), b" " * big])
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and "limit" in obj["error"]
        assert ping_ok(raw)
        # garbage where a header belongs: an ERROR, then the agent closes this connection
        raw.send([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and "malformed frame" in obj["error"]
        assert raw.r.frame() is None
    finally:
        raw.close()
    # a frame cut short, then the client goes
    raw = Raw(nat, "nf0")
    raw.send([wire.HDR.pack(wire.MAGIC, wire.VERSION, wire.JSON, 0, 100), b'{"op":'])
    raw.close()
    with client(nat, "nf0") as c:
        assert c.ping()["pid"] == pid
        assert c.info(entries=True)["maps"]["nat_fwd"]["entries"] == 200


def test_bad_frames_inside_a_put_change_nothing(nat):
    clear(nat, "nf1")
    with client(nat, "nf0") as a:
        chunks = a.get(("per-flow",))
    raw = Raw(nat, "nf1")
    try:
        # a JSON frame among the chunks: the whole put is refused, the connection goes on
        raw.send(wire.encode_json({"op": "put", "token": raw.token}))
        raw.send(wire.encode_chunk(chunks[0]))
        raw.send(wire.encode_json({"op": "ping"}))
        raw.send(wire.encode_chunk(chunks[1]))
        raw.send(wire.encode_json({}, wire.END))
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and "expected CHUNK or END" in obj["error"] and "nothing was applied" in obj["error"]
        assert ping_ok(raw)
        # a chunk whose header does not parse: refused too
        raw.send(wire.encode_json({"op": "put", "token": raw.token}))
        raw.send(wire.encode_chunk(chunks[0]))
        raw.send([wire.HDR.pack(wire.MAGIC, wire.VERSION, wire.CHUNK, 0, 8), b"\x02\0\0\0{}xx"])
        raw.send(wire.encode_json({}, wire.END))
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and "nothing was applied" in obj["error"]
        assert ping_ok(raw)
        # garbage instead of the next frame header: refused, and this connection ends
        raw.send(wire.encode_json({"op": "put", "token": raw.token}))
        raw.send(wire.encode_chunk(chunks[0]))
        raw.send([b"garbage!" * 8])
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and "malformed frame" in obj["error"] and "nothing was applied" in obj["error"]
        assert raw.r.frame() is None
    finally:
        raw.close()
    with client(nat, "nf1") as b:
        assert b.get(("per-flow", "multi-flow")) == []


def test_readopts_pins_that_change(nat):
    """A hot upgrade re-pins maps: the agent notices (another inode) and reopens them."""
    from pathlib import Path
    from nfx.loader import bpfsys
    pin = Path(registry.load(nat["name"])["nodes"]["nf0"]["pin"])
    with client(nat, "nf0") as a:
        n = a.info()["adoptions"]
        fd = bpfsys.obj_get(str(pin / "nat_fwd"))
        try:
            bpfsys.obj_pin(fd, str(pin / "nat_fwd_repin"))
            os.replace(pin / "nat_fwd_repin", pin / "nat_fwd")
        finally:
            os.close(fd)
        assert a.info()["adoptions"] == n + 1
        assert sum(c.count for c in a.get(("per-flow",))) == 400


def test_concurrent_clients(nat):
    errors, n = [], []

    def work():
        try:
            with client(nat, "nf0") as c:
                for _ in range(5):
                    n.append(sum(x.count for x in c.get(("per-flow",))))
                    c.ping()
        except Exception as e:        # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=work) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == [] and n == [400] * 30


def test_client_delay_and_unknown_instance(nat):
    with client(nat, "nf0", delay_ms=40) as c:
        c.connect()
        assert c.ping()["rtt_ms"] >= 80          # a request one way, its reply the other
    with pytest.raises(Exception, match="no NF instance 'nf7'.*") as e:
        client(nat, "nf7")
    assert e.value.exit_code == 3 and "nf0, nf1" in e.value.hint


# ---- marks and filters: the gate obeys them ---------------------------------------------------
def test_mark_and_filter_drive_the_gate(nat):
    name = nat["name"]
    with client(nat, "nf0") as a:
        r = a.mark("drop", filter="sport=1024-1033")
        assert r["marked"] == 20                 # 10 connections, both directions' keys
        m = a.marks()
        assert m["count"] == 20 and {x["action"] for x in m["marks"]} == {"drop"}
        t = rig.run(name, 200, 50000, 0.2)
        assert t["lost"] == t["sent"] * 10 // 200 and t["lost"] > 0
        assert a.unmark(filter="sport=1024-1028")["unmarked"] == 10
        assert a.unmark(all=True)["unmarked"] == 10
        t = rig.run(name, 200, 50000, 0.2)
        assert t["lost"] == 0
        # a wildcard filter catches flows with no mark
        a.set_filter(0, "proto=udp sport=1030", "drop")
        try:
            assert [f["sport"] for f in a.marks()["filters"]] == [1030]
            t = rig.run(name, 200, 50000, 0.2)
            assert t["lost"] == t["sent"] // 200 and t["lost"] > 0
        finally:
            a.clear_filter(0)
        assert a.marks()["filters"] == []
        # marks by explicit flow: the NAT's translated key comes along
        r = a.mark("process", flows=[{"src": "10.0.1.2", "dst": "10.0.2.2", "sport": 1024, "dport": 9000,
                                      "proto": "udp"}])
        assert r["marked"] == 2
        a.unmark(all=True)


# ---- events -----------------------------------------------------------------------------------
def test_subscribe_stats_and_alerts(ids):
    name = ids["name"]
    nf = builder.instance(name, "nf0")
    nf.add_signature(77, b"SUBSCRIBE-ME", proto="udp")
    with client(ids, "nf0", timeout=10) as c:
        sub = c.subscribe(["stats", "alerts", "statelets", "bogus"], interval=0.2)
        assert {"stats", "alerts"} <= set(sub.streams)
        assert "bogus" in sub.unavailable
        assert "statelets" in sub.streams or "statelets" in sub.unavailable
        py(ids["nodes"]["h1"]["ns"], "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                     "[s.sendto(b'SUBSCRIBE-ME now', ('10.0.2.2', 9999)) for _ in range(3)]")
        evs = sub.events(1.5)
        summary = sub.close()
        assert summary["events"] >= len(evs)
        alerts = [e for e in evs if e["stream"] == "alerts"]
        stats = [e for e in evs if e["stream"] == "stats"]
        assert len(alerts) == 3 and all(a["sig_id"] == 77 and a["kind"] == "sig" for a in alerts)
        assert alerts[0]["flow"]["dport"] == 9999
        assert len(stats) >= 4 and sum(e["delta"].get("v_redirect", 0) for e in stats) >= 3
        assert c.ping()["ok"]                    # same connection, usable after the stream


def test_alerts_unavailable_on_nat(nat):
    with client(nat, "nf0") as c:
        with pytest.raises(BadInput, match="no alert ring"):
            c.subscribe(["alerts"])
        assert c.ping()["ok"]


# ---- kill -9 under traffic --------------------------------------------------------------------
def test_kill_9_and_restart_under_traffic(nat):
    name = nat["name"]
    rec = registry.load(name)
    pid = rec["nodes"]["nf0"]["agent"]["pid"]
    kept = client(nat, "nf0")                   # a connection that outlives the agent
    before = kept.get(("per-flow", "multi-flow"))
    traffic = subprocess.Popen([sys.executable, "-m", "nfx", "traffic", "run", "--name", name, "--flows", "200",
                                "--rate", "50000", "--duration", "4", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        os.kill(pid, signal.SIGKILL)
        assert agents.wait_gone(pid)
        assert not agents.is_agent(pid, name, "nf0")
        with pytest.raises(AgentDown, match="not answering.*connection refused") as e:
            client(nat, "nf0", timeout=2).ping()
        assert e.value.hint == f"start it: nfx nf start --name {name} --instance nf0"
        r = nfx("nf", "start", "--name", name, "--instance", "nf0", "--json")
        assert r.returncode == 0, r.stderr
        new = json_loads(r.stdout)["started"]["nf0"]["pid"]
        assert new != pid and agents.is_agent(new, name, "nf0")
        out, err = traffic.communicate(timeout=60)
    finally:
        if traffic.poll() is None:
            traffic.kill()
    assert traffic.returncode == 0, err
    t = json_loads(out)
    assert t["sent"] == 200_000 and t["lost"] == 0 and t["received"] == t["sent"]
    assert kept.ping()["pid"] == new            # reconnected once, to the new agent
    after = kept.get(("per-flow", "multi-flow"))
    kept.close()
    d = ops.diff(before, after)
    # the same connections and ports; only their counters moved on
    assert d["only_a"] == d["only_b"] == 0
    assert d["by_table"]["nat_fwd"]["changed"] == 200 and "nat_ports" not in d["by_table"]
    listed = nfx_json("nf", "list", "--name", name)["instances"]
    assert [x["agent"]["answering"] for x in listed] == [True, True]


# ---- the front door: nothing unauthenticated holds a thread, every frame is bounded ---------------
def _agent_pid(rec, inst="nf0") -> int:
    return registry.load(rec["name"])["nodes"][inst]["agent"]["pid"]


def _threads(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _rss_kb(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def _closed_by_peer(s: socket.socket, within: float) -> bool:
    """The agent ended this connection (EOF or reset) within `within` seconds."""
    s.settimeout(within)
    try:
        while True:
            got = s.recv(65536)
            if not got:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_idle_connections_hold_no_thread_and_are_closed(nat):
    from nfx.agent.protocol import HANDSHAKE_S, PENDING_MAX
    pid = _agent_pid(nat)
    with client(nat, "nf0") as c:
        assert c.ping()["ok"]
    threads, fds = _threads(pid), len(os.listdir(f"/proc/{pid}/fd"))
    n = PENDING_MAX + 44
    socks = []
    t0 = time.monotonic()
    try:
        with netns.enter(nat["mgmt"]["ns"]):
            for i in range(n):
                s = socket.socket()
                s.connect((nat["mgmt"]["agents"]["nf0"], 7700))
                if i == 0:       # half a frame, then nothing: the same as silence
                    s.sendall(wire.HDR.pack(wire.MAGIC, wire.VERSION, wire.JSON, 0, 100) + b'{"op":')
                socks.append(s)
        time.sleep(0.3)
        assert _threads(pid) <= threads, "an unauthenticated connection got a thread"
        # the agent still serves, however many wait
        with client(nat, "nf0", timeout=5) as c:
            assert c.ping()["ok"]
        # past PENDING_MAX the oldest were closed at once; the rest after the deadline
        assert _closed_by_peer(socks[0], 0.5) and _closed_by_peer(socks[n - PENDING_MAX - 1], 0.5)
        assert all(_closed_by_peer(s, max(0.1, t0 + HANDSHAKE_S + 3 - time.monotonic())) for s in socks)
        assert time.monotonic() - t0 < HANDSHAKE_S + 3
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    assert len(os.listdir(f"/proc/{pid}/fd")) <= fds and _threads(pid) <= threads


def test_an_authenticated_connection_keeps_its_thread_until_it_ends(nat):
    pid = _agent_pid(nat)
    threads = _threads(pid)
    raw = Raw(nat, "nf0")
    try:
        assert ping_ok(raw)
        assert _threads(pid) == threads + 1
    finally:
        raw.close()
    deadline = time.monotonic() + 5
    while _threads(pid) > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _threads(pid) == threads


@pytest.mark.parametrize("when", ["before authenticating", "inside a put"])
def test_oversized_frame_header_refused_without_allocating(nat, when):
    pid = _agent_pid(nat, "nf1")
    rss = _rss_kb(pid)
    huge = 4 << 30
    raw = Raw(nat, "nf1")
    try:
        if when == "before authenticating":
            raw.send([wire.HDR.pack(wire.MAGIC, wire.VERSION, wire.JSON, 0, huge)])
        else:
            assert ping_ok(raw)
            raw.send(wire.encode_json({"op": "put", "token": raw.token}))
            raw.send([wire.HDR.pack(wire.MAGIC, wire.VERSION, wire.CHUNK, 0, huge), b"\0" * 64])
        kind, obj = raw.r.frame()
        assert kind == wire.ERROR and f"{huge} bytes" in obj["error"], obj
        assert "limit" in obj["error"] or "too large" in obj["error"], obj
        assert _closed_by_peer(raw.s, 3)
    finally:
        raw.close()
    assert _rss_kb(pid) < rss + 100_000
    with client(nat, "nf1") as c:
        assert c.ping()["ok"]


def test_push_goes_only_to_the_testbeds_own_instances(nat):
    clear(nat, "nf1")
    rec = registry.load(nat["name"])
    with client(nat, "nf0") as a, client(nat, "nf1") as b:
        before = b.info(entries=True)["maps"]["nat_fwd"]["entries"]
        for kw, msg in (({"addr": rec["mgmt"]["controller"]}, "is not where nf1"),
                        ({"addr": "192.0.2.1"}, "is not where nf1"),
                        ({"port": 7701}, "is not where nf1")):
            with pytest.raises(Refused, match=msg):
                a.push("nf1", **kw)
        with pytest.raises(Refused, match="not an instance of testbed"):
            a.push("nf7")
        with pytest.raises(Refused, match="not an instance of testbed"):
            a.push("h1")
        assert b.info(entries=True)["maps"]["nat_fwd"]["entries"] == before == 0
        # the instance's own address, given explicitly, is fine
        r = a.push("nf1", addr=rec["mgmt"]["agents"]["nf1"], filter="sport=1024-1030")
        assert r["failed"] == [] and r["imported"] > 0


def json_loads(s):
    import json
    return json.loads(s)
