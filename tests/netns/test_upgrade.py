"""Hot upgrade on a SHarP testbed with real traffic: the generator sends 100k pps over 1000 flows
through the NAT while its program is replaced, and the sink checks every packet.

(a) same layout: no packet lost, duplicated or reordered; every table the same object; exact
    per-flow counters; the new program on both sides, pinned and in the registry.
(b) a real TCP connection (h1 -> h2, python sockets) streams through the swap.
(c) a layout change (v2 nat_fwd/nat_rev value) with its conversion under traffic: every
    connection's state carried, counters exact; keys the old program creates between the last
    copy and the swap are carried by pass 2.
(d) failures: nothing changes, the old program stays attached, the error says why."""
import ctypes as ct
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nfx import layout as L
from nfx.errors import BadInput, BpfError, NfxError, NotFound
from nfx.flows import be_to_port
from nfx.loader import attach, bpfsys, netns
from nfx.loader import swap as live
from nfx import registry
from nfx import upgrade as U
from nfx.procs import agents
from nfx.state import ops
from nfx.testbed import builder
from nfx.traffic.report import settle
from nfx.traffic.rig import rig
from tests.netns.tbutil import nfx, nfx_json, running_testbed

FLOWS, RATE = 1000, 100_000
SPORT_BASE = 1024                       # the rig's generator: flow i leaves from sport 1024 + i


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=1, max_flows=65536) as rec:
        with rig(rec["name"], FLOWS) as (gen, sink):
            yield {"rec": rec, "name": rec["name"], "gen": gen, "sink": sink,
                   "ns": rec["nodes"]["nf0"]["ns"], "sides": rec["nodes"]["nf0"]["wiring"],
                   "pin": Path(rec["nodes"]["nf0"]["pin"])}


def nat(tb):
    return builder.instance(tb["name"], "nf0")


def upgrade(testbed: str, instance: str, *args, **kw) -> dict:
    """What `nfx nf upgrade` does: the swap, then the agent restarted on the new objects."""
    r = U.upgrade(testbed, instance, *args, **kw)
    agents.restart_stale(testbed, instance, r)
    return r


def is_v2(tb) -> bool:
    node = registry.load(tb["name"])["nodes"]["nf0"]
    return "NFX_NAT_V2" in node.get("build", {}).get("defines", {})


def fresh(tb, v2: bool = False) -> None:
    """Empty NAT tables (no traffic is running) on the wanted layout."""
    if is_v2(tb) != v2:
        upgrade(tb["name"], "nf0", conversion="nat-v2" if v2 else "nat-v1")
    n = nat(tb)
    for t in ("nat_fwd", "nat_rev", "nat_ports"):
        n.maps[t].clear()
    assert len(n.maps["nat_fwd"]) == 0


def warm(tb) -> None:
    """Every flow gets a mapping (a short burst), then the path drains."""
    tb["sink"].reset()
    tb["gen"].reset()
    g = tb["gen"].run(RATE, 0.2)
    settle(tb["sink"], g["sent"])
    assert len(nat(tb).maps["nat_fwd"]) == FLOWS


def fwd_by_sport(tb) -> dict[int, object]:
    n, keys, vals = nat(tb).maps["nat_fwd"].export()
    return {be_to_port(keys[i].sport): vals[i] for i in range(n)}


def with_traffic(tb, during, lead=0.7, tail=0.7):
    """Traffic at RATE from a thread (the generator in chunks of 0.25 s) from `lead` seconds
    before during() until `tail` seconds after it returns. Returns (during's result, generator
    totals, sink report)."""
    gen, sink = tb["gen"], tb["sink"]
    sink.reset()
    gen.reset()
    stop = threading.Event()
    box = {"per_flow": np.zeros(FLOWS, np.int64), "sent": 0, "requested": 0}

    def send():
        try:
            while not stop.is_set():
                g = gen.run(RATE, 0.25)
                box["per_flow"] += np.array(g["per_flow"])
                box["sent"] += g["sent"]
                box["requested"] += g["requested"]
        except BaseException as e:          # noqa: BLE001 - reported below
            box["err"] = e

    th = threading.Thread(target=send)
    th.start()
    try:
        time.sleep(lead)
        out = during()
        time.sleep(tail)
    finally:
        stop.set()
        th.join()
    if "err" in box:
        raise box["err"]
    g = {"sent": box["sent"], "requested": box["requested"], "per_flow": [int(x) for x in box["per_flow"]]}
    settle(sink, g["sent"], 1.0)
    return out, g, sink.read(g["per_flow"])


def assert_no_loss(g, s):
    assert g["sent"] == g["requested"] and g["sent"] >= RATE, {k: v for k, v in g.items() if k != "per_flow"}
    assert (s["received"], s["lost"], s["duplicated"], s["reordered"], s["unexpected"]) == (g["sent"], 0, 0, 0, 0), s
    assert s["aborted"] == 0 and s["bad_flow"] == 0


def assert_exact_counters(before: dict, after: dict, g: dict, size: int):
    """Per flow: what the NAT counted during the run equals what the generator sent."""
    assert sorted(after) == sorted(before) == [SPORT_BASE + i for i in range(FLOWS)]
    got = np.array([after[SPORT_BASE + i].pkts - before[SPORT_BASE + i].pkts for i in range(FLOWS)])
    sent = np.array(g["per_flow"])
    assert (got == sent).all(), f"{int((got != sent).sum())} flows differ, e.g. {list(zip(got[got != sent][:5], sent[got != sent][:5]))}"
    nbytes = np.array([after[SPORT_BASE + i].bytes - before[SPORT_BASE + i].bytes for i in range(FLOWS)])
    assert (nbytes == sent * size).all()


def attached_ids(tb) -> dict[str, int]:
    return {i: pid for i, (pid, _) in attach.xdp_attachments(tb["ns"]).items()}


def pinned_ids(tb) -> dict[str, int]:
    out = {}
    for p in sorted(tb["pin"].iterdir()):
        fd = bpfsys.obj_get(str(p))
        try:
            out[p.name] = bpfsys.prog_info(fd)[0].id if p.name == "prog" else bpfsys.map_info(fd).id
        finally:
            os.close(fd)
    return out


def prog_maps(tb) -> set[int]:
    """Ids of the maps the pinned program uses."""
    fd = bpfsys.obj_get(str(tb["pin"] / "prog"))
    try:
        return set(bpfsys.prog_info(fd)[1])
    finally:
        os.close(fd)


def nothing_changed(tb, before_pins: dict, before_att: dict, upgrades: int):
    assert pinned_ids(tb) == before_pins
    assert attached_ids(tb) == before_att
    node = registry.load(tb["name"])["nodes"]["nf0"]
    assert len(node.get("upgrades", [])) == upgrades
    assert not (tb["pin"].parent / "upgrade-nf0").exists()
    assert "upg0" not in netns.ip("-o", "link", "show", ns=tb["ns"])


# ---- (a) ----------------------------------------------------------------------------------------
def test_same_layout_upgrade_under_traffic(tb):
    fresh(tb)
    warm(tb)
    base = fwd_by_sport(tb)
    pins0, att0 = pinned_ids(tb), attached_ids(tb)
    old_id = pins0["prog"]
    assert all(att0[s] == old_id for s in tb["sides"])
    n_up = len(registry.load(tb["name"])["nodes"]["nf0"].get("upgrades", []))
    snap = {}

    def during():
        snap["before"] = ops.index(ops.export(nat(tb), ("per-flow", "multi-flow")))
        return upgrade(tb["name"], "nf0")

    r, g, s = with_traffic(tb, during)
    print(f"\nshared upgrade: swap {r['swap']}, timing {r['timing']}, agent {r['agent']}")
    assert_no_loss(g, s)
    assert_exact_counters(base, fwd_by_sport(tb), g, tb["gen"].size)

    # the same state objects, the new program everywhere the old one ran
    new_id = r["new_prog_id"]
    assert new_id != old_id and r["old_prog_id"] == old_id and r["mode"] == "shared"
    att = attached_ids(tb)
    assert all(att[s] == new_id for s in tb["sides"]) and old_id not in att.values()
    assert r["attached"] == {i: new_id for i in r["interfaces"]}
    pins = pinned_ids(tb)
    assert pins["prog"] == new_id
    for t in ("nat_fwd", "nat_rev", "nat_ports", "nat_cfg", "nfx_stats", "nfx_marks", "nfx_port_cfg"):
        assert pins[t] == pins0[t] and r["maps"][t] == {"how": "shared", "id": pins0[t], "old_id": pins0[t]}, t
    assert r["maps"]["nfx_tx"]["how"] == "fresh" and pins["nfx_tx"] == r["maps"]["nfx_tx"]["id"] != pins0["nfx_tx"]
    used = prog_maps(tb)
    assert {pins0[t] for t in ("nat_fwd", "nat_rev", "nat_ports")} <= set(used)

    # mappings identical except counters that grew
    after = ops.index(ops.export(nat(tb), ("per-flow", "multi-flow")))
    before = snap["before"]
    assert before.keys() == after.keys() and len(before) == 3 * FLOWS
    for (table, k), v in before.items():
        if table == "nat_ports":
            assert after[(table, k)] == v
            continue
        a, b = L.NatEntry.from_buffer_copy(v), L.NatEntry.from_buffer_copy(after[(table, k)])
        assert bytes(a.peer) == bytes(b.peer) and a.created_ns == b.created_ns
        assert b.pkts >= a.pkts and b.bytes >= a.bytes and b.last_seen_ns >= a.last_seen_ns

    # the instance's agent was restarted on the new objects, and answers
    from nfx.agent.client import AgentClient
    assert r["agent"] and r["agent"]["pid"] != r["agent"]["old_pid"]
    assert agents.pid_of(registry.load(tb["name"]), "nf0") == r["agent"]["pid"]
    with AgentClient(tb["name"], "nf0", timeout=5) as c:
        assert c.ping()["pid"] == r["agent"]["pid"]

    # recorded: program id, time, source hash
    node = registry.load(tb["name"])["nodes"]["nf0"]
    last = node["upgrades"][-1]
    assert len(node["upgrades"]) == n_up + 1 and node["prog_id"] == new_id
    assert last["prog_id"] == new_id and last["old_prog_id"] == old_id and abs(last["time"] - time.time()) < 60
    assert last["source_sha256"] == r["source_sha256"] and len(r["source_sha256"]) == 64
    # both programs were parked in the XDP dispatcher first: each swap is a pointer exchange
    assert r["prewarm"]["ok"] and len(r["swap"]["per_interface_us"]) == len(r["interfaces"]) >= 2


# ---- (b) ----------------------------------------------------------------------------------------
SERVER = r"""
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7100)); s.listen(1); s.settimeout(30)
print("ready", flush=True)
c, peer = s.accept(); c.settimeout(30)
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d); n += len(d)
c.sendall(b"%d %s" % (n, h.hexdigest().encode()))
c.close()
print(peer[0], peer[1], n, h.hexdigest(), flush=True)
"""

CLIENT = r"""
import hashlib, random, socket, sys, time
c = socket.create_connection(("10.0.2.2", 7100), timeout=30)
h, n, t0, i = hashlib.sha256(), 0, time.time(), 0
print("connected", c.getsockname()[1], flush=True)
while time.time() - t0 < float(sys.argv[1]):
    d = random.Random(i).randbytes(16384); i += 1
    c.sendall(d); h.update(d); n += len(d)
    time.sleep(0.002)
c.shutdown(socket.SHUT_WR)
reply = c.recv(200).decode()
print(n, h.hexdigest(), reply, flush=True)
"""


def tcp_counters(ns: str) -> dict[str, int]:
    out = {}
    for f in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = netns.run(["cat", f], ns=ns).splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            proto, names = head.split(":", 1)
            if proto in ("Tcp", "TcpExt"):
                out.update(zip(names.split(), map(int, vals.split(":", 1)[1].split())))
    return out


@pytest.mark.parametrize("conversion", [None, "nat-v2"])
def test_tcp_connection_survives_upgrade(tb, conversion):
    fresh(tb)
    h1, h2 = tb["rec"]["nodes"]["h1"]["ns"], tb["rec"]["nodes"]["h2"]["ns"]
    c0, nf0 = tcp_counters(h1), nat(tb).stats()
    srv = subprocess.Popen(["ip", "netns", "exec", h2, "python3", "-c", SERVER], stdout=subprocess.PIPE, text=True)
    cli = None
    try:
        assert srv.stdout.readline().strip() == "ready"
        cli = subprocess.Popen(["ip", "netns", "exec", h1, "python3", "-c", CLIENT, "3.0"],
                               stdout=subprocess.PIPE, text=True)
        local_port = int(cli.stdout.readline().split()[1])
        time.sleep(0.8)
        [before] = [m for m in nat(tb).mappings() if m["proto"] == "tcp" and m["sport"] == local_port]
        r = upgrade(tb["name"], "nf0", conversion=conversion)
        c_out = cli.communicate(timeout=30)[0].split()
        s_out = srv.communicate(timeout=30)[0].split()
    finally:
        for p in (cli, srv):
            if p and p.poll() is None:
                p.kill()
    assert cli.returncode == 0 and srv.returncode == 0
    sent, sent_hash, got, got_hash = int(c_out[0]), c_out[1], int(c_out[2]), c_out[3]
    assert sent > 1_000_000 and (got, got_hash) == (sent, sent_hash)
    peer_ip, peer_port, srv_n, srv_hash = s_out
    assert (int(srv_n), srv_hash) == (sent, sent_hash)
    # one mapping, the same public address before and after, and it is what the server saw
    [after] = [m for m in nat(tb).mappings() if m["proto"] == "tcp" and m["sport"] == local_port]
    assert before["public"] == after["public"] == f"{peer_ip}:{peer_port}"
    assert after["pkts_out"] > before["pkts_out"] and after["pkts_in"] > before["pkts_in"]
    assert r["mode"] == ("converted" if conversion else "shared")
    c1, nf1 = tcp_counters(h1), nat(tb).stats()
    tcp_delta = {k: c1[k] - c0.get(k, 0) for k in c1 if c1[k] != c0.get(k, 0)
                 and any(w in k for w in ("Retrans", "Loss", "Spurious", "Timeout", "Probe", "Reorder", "Undo", "DSACK"))}
    nf_delta = {k: v - nf0.get(k, 0) for k, v in nf1.items()
                if v != nf0.get(k, 0) and not k.startswith(("v_redirect", "r_ok", "r_empty"))}
    print(f"\ntcp through {r['mode']} upgrade: {sent} bytes, swap {r['swap']['total_us']} us, "
          f"timing {r['timing']}, passes {r['passes']}, "
          f"tcp {tcp_delta}, nf {nf_delta}")
    # nothing lost: the NAT dropped no packet, and any retransmission was a spurious one (a tail
    # loss probe sent while the CPUs were busy compiling, whose original the receiver reports
    # with a D-SACK)
    assert nf_delta.get("v_drop", 0) == 0 and nf_delta.get("v_aborted", 0) == 0, nf_delta
    assert tcp_delta.get("RetransSegs", 0) == tcp_delta.get("TCPDSACKRecvSegs", 0), tcp_delta


# ---- (c) ----------------------------------------------------------------------------------------
def test_layout_change_with_conversion_under_traffic(tb):
    fresh(tb, v2=False)
    warm(tb)
    base = fwd_by_sport(tb)
    pins0 = pinned_ids(tb)
    snap = {}

    def hook(stage):
        # the generator shares this process's GIL: give it the CPU between the last copy and the
        # swap, so the old program really changes entries that only pass 2 can carry over
        if stage == "before_swap":
            time.sleep(0.02)

    def during():
        snap["before"] = list(ops.export(nat(tb), ("per-flow", "multi-flow")))
        return upgrade(tb["name"], "nf0", conversion="nat-v2", hook=hook)

    r, g, s = with_traffic(tb, during)
    print(f"\nconverted upgrade: swap {r['swap']}, timing {r['timing']}\n  passes {r['passes']}")
    assert_no_loss(g, s)
    after_fwd = fwd_by_sport(tb)
    assert isinstance(next(iter(after_fwd.values())), L.NatEntryV2)
    assert_exact_counters(base, after_fwd, g, tb["gen"].size)
    assert all(v.max_len == tb["gen"].size for v in after_fwd.values())   # only the v2 program writes it

    # every connection's state carried: the export before, converted, against the export after
    before = ops.index(snap["before"])
    after = ops.index(ops.export(nat(tb), ("per-flow", "multi-flow")))
    assert before.keys() == after.keys() and len(before) == 3 * FLOWS
    conv = U.by_field(L.NatEntry, L.NatEntryV2)
    for (table, k), v in before.items():
        if table == "nat_ports":
            assert after[(table, k)] == v
            continue
        a = L.NatEntryV2.from_buffer_copy(conv(np.frombuffer(v, np.uint8).reshape(1, -1)).tobytes())
        b = L.NatEntryV2.from_buffer_copy(after[(table, k)])
        assert bytes(a.peer) == bytes(b.peer) and a.created_ns == b.created_ns, (table, k.hex())
        assert b.pkts >= a.pkts and b.bytes >= a.bytes and b.last_seen_ns >= a.last_seen_ns
        assert b.tcp_flags & a.tcp_flags == a.tcp_flags

    # the pins describe the new program: converted tables replaced, the rest the same objects
    pins = pinned_ids(tb)
    assert r["mode"] == "converted" and pins["prog"] == r["new_prog_id"]
    for t in ("nat_fwd", "nat_rev"):
        assert r["maps"][t]["how"] == "converted" and pins[t] == r["maps"][t]["id"] != pins0[t]
        assert bpfsys.map_info_path(str(tb["pin"] / t)).value_size == ct.sizeof(L.NatEntryV2)
    for t in ("nat_ports", "nat_cfg", "nat_cursor", "nfx_stats"):
        assert pins[t] == pins0[t]
    used = prog_maps(tb)
    assert pins["nat_fwd"] in used and pins0["nat_fwd"] not in used
    p1 = [p for p in r["passes"] if p["pass"] == "1"]
    assert {p["table"]: p["entries"] for p in p1} == {"nat_fwd": FLOWS, "nat_rev": FLOWS}
    p2 = [p for p in r["passes"] if p["pass"] == "2" and p["table"] == "nat_fwd"][0]
    assert p2["changed"] > 100 and p2["merged"] == p2["changed"], p2      # pass 2 carried real traffic
    assert r["conflicts"] == []
    assert registry.load(tb["name"])["nodes"]["nf0"]["build"]["defines"]["NFX_NAT_V2"] == 1


UDP_SINK = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7200)); s.settimeout(20)
print("ready", flush=True)
while True:
    d, peer = s.recvfrom(100)
    print(d.decode(), peer[1], flush=True)
    if d == b"end":
        break
"""


def test_keys_created_between_copy_and_swap_are_carried(tb):
    """Deterministic pass 2: right before the swap the old program counts packets of a known
    connection and creates a new one; both reach the new tables, and the new connection keeps
    the public port the old program gave it."""
    fresh(tb, v2=False)
    h1, h2 = tb["rec"]["nodes"]["h1"]["ns"], tb["rec"]["nodes"]["h2"]["ns"]
    srv = subprocess.Popen(["ip", "netns", "exec", h2, "python3", "-c", UDP_SINK], stdout=subprocess.PIPE, text=True)
    send = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',int(sys.argv[1])))\n"
            "for m in sys.argv[2:]: s.sendto(m.encode(),('10.0.2.2',7200))")

    def udp(sport, *msgs):
        subprocess.run(["ip", "netns", "exec", h1, "python3", "-c", send, str(sport), *msgs], check=True)

    def wait_for(cond, what):
        t0 = time.time()
        while time.time() - t0 < 3:
            if cond():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    def count(sport):
        m = [m for m in nat(tb).mappings() if m["sport"] == sport and m["proto"] == "udp"]
        return m[0]["pkts_out"] if m else 0

    try:
        assert srv.stdout.readline().strip() == "ready"
        udp(41000, "a1", "a2")
        wait_for(lambda: count(41000) == 2, "the first connection")

        def hook(stage):
            if stage == "before_swap":       # tables copied; the old program still runs
                udp(41000, "a3", "a4", "a5")
                udp(42000, "b1")
                wait_for(lambda: count(41000) == 5 and count(42000) == 1, "the old program")

        r = upgrade(tb["name"], "nf0", conversion="nat-v2", hook=hook)
        udp(42000, "b2")
        udp(41000, "a6", "end")
        lines = [srv.stdout.readline().split() for _ in range(9)]
    finally:
        srv.kill()
        srv.wait()
    ports = {}
    for msg, port in lines:
        ports.setdefault(msg[0], set()).add(port)
    assert len(ports["a"]) == 1 and len(ports["b"]) == 1, ports      # one public port per connection
    m = {x["sport"]: x for x in nat(tb).mappings() if x["proto"] == "udp"}
    assert m[41000]["pkts_out"] == 7 and m[42000]["pkts_out"] == 2
    assert m[42000]["public"].endswith(":" + next(iter(ports["b"])))
    p2 = {p["table"]: p for p in r["passes"] if p["pass"] == "2"}
    assert p2["nat_fwd"]["new"] == 1 and p2["nat_fwd"]["changed"] == 1 and p2["nat_fwd"]["inserted"] == 1
    assert p2["nat_fwd"]["merged"] == 1 and p2["nat_rev"]["inserted"] == 1
    assert r["conflicts"] == []


# ---- (d) ----------------------------------------------------------------------------------------
def _snapshot(tb):
    return pinned_ids(tb), attached_ids(tb), len(registry.load(tb["name"])["nodes"]["nf0"].get("upgrades", []))


def test_source_that_does_not_compile_changes_nothing(tb, tmp_path):
    fresh(tb)
    bad = tmp_path / "nat_broken.bpf.c"
    bad.write_text((Path(__file__).parents[2] / "bpf" / "nat.bpf.c").read_text() + "\nint oops( {\n")
    before = _snapshot(tb)
    with pytest.raises(BpfError, match="compiling nat_broken.bpf.c failed"):
        upgrade(tb["name"], "nf0", source=str(bad))
    nothing_changed(tb, *before)


def test_conversion_that_raises_under_traffic_changes_nothing(tb):
    fresh(tb)
    warm(tb)
    before = _snapshot(tb)
    good = U.by_field(L.NatEntry, L.NatEntryV2)

    def flaky(vals):                      # accepts the probe row, fails on the real table
        if len(vals) > 1:
            raise ValueError("boom")
        return good(vals)

    def during():
        with pytest.raises(BadInput, match="conversion of nat_fwd raised ValueError: boom"):
            upgrade(tb["name"], "nf0", defines={"NFX_NAT_V2": 1}, conversion={"nat_fwd": flaky, "nat_rev": good})

    _, g, s = with_traffic(tb, during)
    assert_no_loss(g, s)
    nothing_changed(tb, *before)
    assert not is_v2(tb)


def test_layout_change_without_conversion_is_refused(tb):
    fresh(tb)
    before = _snapshot(tb)
    with pytest.raises(BpfError, match=r"nat_fwd: .*value 64 B.*value 56 B.*give a conversion for nat_fwd"):
        upgrade(tb["name"], "nf0", defines={"NFX_NAT_V2": 1})
    nothing_changed(tb, *before)
    with pytest.raises(BadInput, match="no table nat_nope"):
        upgrade(tb["name"], "nf0", conversion={"nat_nope": lambda v: v})
    with pytest.raises(NotFound):
        upgrade(tb["name"], "nf9")
    nothing_changed(tb, *before)


def test_second_interface_failing_rolls_the_first_back(tb, monkeypatch):
    fresh(tb)
    before = _snapshot(tb)
    real = live.replace_xdp
    second = tb["sides"][1]
    old_id = before[0]["prog"]

    def failing(ifname, fd, mode):
        if ifname == second and bpfsys.prog_info(fd)[0].id != old_id:
            return -1
        return real(ifname, fd, mode)

    monkeypatch.setattr(live, "replace_xdp", failing)
    with pytest.raises(BpfError, match=rf"attaching the new program to {second} failed.*{tb['sides'][0]} put back to program {old_id}"):
        upgrade(tb["name"], "nf0")
    nothing_changed(tb, *before)


def test_failure_after_the_swap_rolls_back(tb):
    fresh(tb)
    warm(tb)
    before = _snapshot(tb)

    def hook(stage):
        if stage == "swapped":
            raise RuntimeError("injected after the swap")

    with pytest.raises(NfxError, match="rolled back to program"):
        upgrade(tb["name"], "nf0", conversion="nat-v2", hook=hook)
    nothing_changed(tb, *before)
    assert len(nat(tb).maps["nat_fwd"]) == FLOWS


def test_cli_upgrade(tb):
    fresh(tb)
    before = pinned_ids(tb)["prog"]
    r = nfx_json("nf", "upgrade", "--name", tb["name"], "--instance", "nf0")
    assert r["old_prog_id"] == before and r["new_prog_id"] == pinned_ids(tb)["prog"] != before
    bad = nfx("nf", "upgrade", "--name", tb["name"], "--instance", "nf7")
    assert bad.returncode == 3 and "nf7" in bad.stderr
    bad = nfx("nf", "upgrade", "--name", tb["name"], "--instance", "nf0", "--define", "NFX_NAT_V2=1")
    assert bad.returncode == 7 and "give a conversion" in bad.stderr
    r = nfx_json("nf", "upgrade", "--name", tb["name"], "--instance", "nf0", "--conversion", "nat-v2")
    assert r["maps"]["nat_fwd"]["how"] == "converted" and r["defines"]["NFX_NAT_V2"] == 1
    # (back to v1 through the same code: fresh() in the tests above)
