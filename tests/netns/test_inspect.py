"""nfx inspect on real testbeds: stats under traffic, statelets and alerts through the flow filter,
an agent lost and regained mid-watch, the screen, and the refusals with their exit codes."""
import json
import subprocess
import sys
import threading
import time

import pytest

from nfx import layout as L
from nfx.procs import agents
from nfx.agent.client import AgentClient
from nfx.gate import Gate
from nfx.filter import parse
from nfx import registry
from nfx.testbed import builder
from nfx.traffic import rig
from nfx.traffic.report import measure
from tests.netns.tbutil import nfx, py, running_testbed

SIG_SEND = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "[s.sendto(b'xxxxEVIL-PAYLOAD!', ('10.0.2.2', p)) for p in (9999, 9998, 9999)]")


@pytest.fixture(scope="module")
def nat():
    with running_testbed("sharp", "nat", instances=2) as rec:
        yield rec


@pytest.fixture(scope="module")
def ids():
    with running_testbed("sharp", "ids", instances=1) as rec:
        yield rec


def events(r: subprocess.CompletedProcess) -> list[dict]:
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


class Traffic:
    """rig.run in a thread; entering waits until nf0 counts packets."""

    def __init__(self, name: str, flows: int, rate: int, seconds: float):
        self.name, self.result = name, {}
        self.t = threading.Thread(target=lambda: self.result.update(rig.run(name, flows, rate, seconds)))

    def __enter__(self):
        nf = builder.instance(self.name, "nf0")
        before = nf.stats().get("r_ok", 0)
        self.t.start()
        end = time.monotonic() + 20
        while nf.stats().get("r_ok", 0) < before + 1000:
            assert time.monotonic() < end and self.t.is_alive(), "no traffic reached nf0"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.t.join(60)


def test_json_stats_under_traffic(nat):
    name = nat["name"]
    with Traffic(name, 200, 50_000, 4.0):
        t0 = time.monotonic()
        evs = events(nfx("inspect", "--name", name, "--json", "--duration", "2", "--interval", "0.25"))
        took = time.monotonic() - t0
    assert took < 10
    assert {(e["instance"], e["streams"][0]) for e in evs if e["stream"] == "subscribed"} == {("nf0", "stats"),
                                                                                            ("nf1", "stats")}
    stats = [e for e in evs if e["stream"] == "stats" and e["instance"] == "nf0"]
    assert len(stats) >= 5
    pps = [sum(v for k, v in e["delta"].items() if k.startswith("v_")) / e["interval_s"] for e in stats]
    assert max(pps) > 20_000, pps
    assert all(e["total"]["v_redirect"] >= e["delta"].get("v_redirect", 0) for e in stats)
    assert {e["instance"] for e in evs if e["stream"] == "end"} == {"nf0", "nf1"}
    assert not [e for e in evs if e["stream"] == "alerts"]     # a NAT has no alert ring: listed, not fatal
    sub = next(e for e in evs if e["stream"] == "subscribed")
    assert "no alert ring" in sub["unavailable"]["alerts"]


def test_statelets_only_of_matching_flows(nat):
    name = nat["name"]
    nf = builder.instance(name, "nf0")
    flt = "sport=1024-1030"
    with AgentClient(name, "nf0") as a:         # these connections start again: creation statelets too
        a.delete(scopes=("per-flow", "multi-flow"), filter=flt)
    Gate(nf).set_filter(0, parse("all"), L.Action.STATELET)
    try:
        # the generator and sink are compiled before the inspector's 4 s begin: on a loaded
        # machine compiling them took longer than the whole watch
        with rig.rig(name, 100) as (gen, sink):
            p = subprocess.Popen([sys.executable, "-m", "nfx", "inspect", "--name", name, "-I", "nf0", "--json",
                                  "--duration", "4", "--streams", "statelets", "--flow", flt],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            first = json.loads(p.stdout.readline())
            assert first["stream"] == "subscribed" and first["streams"] == ["statelets"]
            measure(gen, sink, 20_000, 2.0)
            rest, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    finally:
        Gate(nf).clear_filter(0)
    evs = [json.loads(x) for x in rest.splitlines()]
    sls = [e for e in evs if e["stream"] == "statelets"]
    [end] = [e for e in evs if e["stream"] == "end"]
    by_table = {t: [e for e in sls if e["table"] == t] for t in ("nat_fwd", "nat_rev", "nat_ports")}
    assert len(sls) > 100 and set(by_table) >= {e["table"] for e in sls}
    assert {e["key"]["sport"] for e in by_table["nat_fwd"]} == set(range(1024, 1031))
    # the outside side is tied to its connection by the statelets that created it
    public = {e["fields"]["peer"]["dport"] for e in by_table["nat_fwd"] if "peer" in e["fields"]}
    assert len(public) == 7
    assert by_table["nat_rev"] and all(e["key"]["dport"] in public for e in by_table["nat_rev"])
    assert len(by_table["nat_ports"]) == 7 and all(e["key"]["port"] in public for e in by_table["nat_ports"])
    assert end["events"] > len(sls)            # the other 93 flows' statelets came and were left out


def test_alerts_through_the_flow_filter(ids):
    name = ids["name"]
    builder.instance(name, "nf0").add_signature(4242, b"EVIL-PAYLOAD", offset=4, proto="udp")
    p = subprocess.Popen([sys.executable, "-m", "nfx", "inspect", "--name", name, "--json", "--duration", "3",
                          "--streams", "stats,alerts", "--flow", "dport=9999", "--interval", "0.25"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(p.stdout.readline())
    assert first["stream"] == "subscribed" and set(first["streams"]) == {"stats", "alerts"}
    py(ids["nodes"]["h1"]["ns"], SIG_SEND)
    rest, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    evs = [json.loads(x) for x in rest.splitlines()]
    alerts = [e for e in evs if e["stream"] == "alerts"]
    assert len(alerts) == 2
    assert all((a["instance"], a["kind"], a["sig_id"], a["flow"]["dport"]) == ("nf0", "sig", 4242, 9999) for a in alerts)
    assert sum(e["delta"].get("r_ids_sig_match", 0) for e in evs if e["stream"] == "stats") == 3
    flows = [e for e in evs if e["stream"] == "flows"]
    assert flows and {r["flow"]["dport"] for r in flows[-1]["rows"]} == {9999}


def test_screen(nat):
    name = nat["name"]
    r = nfx("inspect", "--name", name, "--duration", "1.5", "--flow", "proto=udp", "--top", "3")
    assert r.returncode == 0, r.stderr
    for what in ("nf0 · nat · live", "nf1 · nat · live", "packets", "drops", "moves", "statelets",
                 "flows matching 'proto=udp'", "watching 0:00:0"):
        assert what in r.stdout, (what, r.stdout)


def test_agent_lost_and_back(nat):
    name = nat["name"]
    p = subprocess.Popen([sys.executable, "-m", "nfx", "inspect", "--name", name, "-I", "nf1", "--json",
                          "--duration", "5", "--streams", "stats", "--interval", "0.25"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(p.stdout.readline())["stream"] == "subscribed"
        time.sleep(0.5)
        rec = registry.load(name)
        assert agents.stop(rec, "nf1")["stopped"]
        time.sleep(1.0)
        agents.start(registry.load(name), ["nf1"])
        rest, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    streams = [json.loads(x)["stream"] for x in rest.splitlines()]
    assert "error" in streams
    i = streams.index("error")
    assert "subscribed" in streams[i:] and "stats" in streams[streams.index("subscribed", i):]


def test_refusals(nat):
    name = nat["name"]
    cases = [
        (("--name", "nosuchtb"), 3, "no testbed 'nosuchtb'"),
        (("--name", "nosuchtb", "--flow", "sport=99999"), 2, "filter: port range"),   # before anything else
        (("--name", name, "--flow", "bogus"), 2, "is not key=value"),
        (("--name", name, "-I", "nf9"), 3, "no NF instance 'nf9'"),
        (("--name", name, "--streams", "alerts"), 2, "no alert ring"),
        (("--name", name, "--streams", ""), 2, "--streams"),
        (("--name", name, "--interval", "0.001"), 2, "--interval"),
        (("--name", name, "--duration", "-1"), 2, "--duration"),
    ]
    for args, code, msg in cases:
        r = nfx("inspect", *args, "--json", "--duration", "1") if "--duration" not in args else \
            nfx("inspect", *args, "--json")
        assert (r.returncode, r.stdout) == (code, ""), (args, r.returncode, r.stdout, r.stderr)
        assert msg in r.stderr, (args, r.stderr)
    rec = registry.load(name)
    agents.stop(rec, "nf1")
    try:
        r = nfx("inspect", "--name", name, "--json", "--duration", "1")
        assert r.returncode == 3 and r.stdout == ""
        assert "agent of nf1" in r.stderr and "not answering" in r.stderr and "nfx nf start" in r.stderr
    finally:
        agents.start(registry.load(name), ["nf1"])
