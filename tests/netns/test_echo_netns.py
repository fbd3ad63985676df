"""Echo through a NAT testbed: h2's sink reflects every packet it counts to the NAT's public
address and port, the NAT translates it back to h1, and a sink on h1's eth0 counts the echoes and
times the round trip (SHarP's measurement, seeds/sharp-handover.txt section IV)."""
import json
import math

import pytest

from nfx.loader import attach
from nfx.testbed import builder
from nfx.traffic.report import measure
from nfx.traffic.rig import gen_and_sink_hosts, rig
from tests.netns.tbutil import nfx, path_errors, running_testbed

FLOWS, RATE, SECONDS = 100, 20000, 1.0


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2) as rec:
        yield rec


def nf_stats(name):
    return {i: builder.instance(name, i).stats() for i in ("nf0", "nf1")}


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def test_echo_round_trip_through_the_nat(tb):
    name = tb["name"]
    h1, h2 = gen_and_sink_hosts(tb)
    stubs = {h["ns"]: attach.xdp_attachments(h["ns"])[builder.HOST_IF] for h in (h1, h2)}
    before = nf_stats(name)
    with rig(name, FLOWS, echo=True) as (gen, sink, back):
        r = measure(gen, sink, RATE, SECONDS, echo=back)
    after = nf_stats(name)
    e = r["echo"]
    why = {"run": r, "path": path_errors(name)}
    assert r["sent"] == int(RATE * SECONDS), why
    assert r["lost"] == 0 and r["clean"], why
    assert e["reflected"] == r["received"] == r["sent"], why
    assert e["received"] == r["sent"] and e["lost"] == 0 and e["lost_round_trip"] == 0, why
    assert e["duplicated"] == 0 and e["reordered"] == 0 and e["unexpected"] == 0 and e["clean"], why
    # the round trip crosses the NAT twice and h2's reflection: longer than the way out
    assert e["rtt_p50_us"] > r["lat_p50_us"], why
    assert math.isfinite(e["rtt_max_us"]) and e["rtt_max_us"] >= e["rtt_p99_us"] * 0.75 > 0, why
    # every echo was translated back by nf0 (which holds the flows' mappings); nf1 saw nothing
    d0, d1 = delta(after["nf0"], before["nf0"]), delta(after["nf1"], before["nf1"])
    assert d0.get("v_redirect") == 2 * r["sent"], d0
    assert "r_nat_no_mapping" not in d0 and "v_drop" not in d0 and "v_aborted" not in d0, d0
    assert not d1.get("v_redirect"), d1
    # both hosts got their stub back
    assert {ns: attach.xdp_attachments(ns)[builder.HOST_IF] for ns in stubs} == stubs


def test_cli_echo(tb):
    r = nfx("traffic", "run", "--name", tb["name"], "--flows", "20", "--rate", "5000", "--duration", "0.4",
            "--echo", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    e = out["echo"]
    assert out["lost"] == 0 and e["lost"] == 0 and e["received"] == out["sent"] == 2000
    assert e["rtt_p50_us"] > 0 and e["rtt_max_us"] > 0
    table = nfx("traffic", "run", "--name", tb["name"], "--flows", "20", "--rate", "5000", "--duration", "0.2",
                "--echo", timeout=120)
    assert table.returncode == 0, table.stderr
    assert "echo rtt_p50_us" in table.stdout and "echo lost" in table.stdout


def test_echo_tcp(tb):
    """TCP-flagged segments come back through the NAT's TCP mappings too."""
    out = json.loads(nfx("traffic", "run", "--name", tb["name"], "--flows", "20", "--rate", "5000",
                         "--duration", "0.4", "--proto", "tcp", "--size", "120", "--echo", "--json",
                         timeout=120).stdout)
    e = out["echo"]
    assert out["lost"] == 0 and e["received"] == out["sent"] == 2000 and e["clean"], out
    assert e["rtt_p50_us"] > out["lat_p50_us"]
