"""The CLI contract end to end: testbed up, traffic with the sink's verdict, errors with exit
codes on stderr, and testbed down leaving no namespace, link or pin behind."""
import json
import os
import signal
import time
import subprocess

import pytest

from nfx import layout as L
from nfx.flows import ip_to_be
from nfx.loader import netns
from nfx.paths import PIN_ROOT
from nfx import registry
from nfx.testbed import builder
from tests.netns.tbutil import nfx, nfx_json, unique_name


@pytest.fixture(scope="module")
def name():
    n = unique_name()
    r = nfx("testbed", "up", "--name", n, "--nf", "nat", "--instances", "2", "--json")
    try:
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == "up"
        yield n
    finally:
        if registry.path(n).exists():
            builder.down(n)


def test_traffic_10k_flows_200kpps_clean(name):
    r = nfx_json("traffic", "run", "--name", name, "--flows", "10000", "--rate", "200000", "--duration", "5")
    assert r["sent"] == 1_000_000
    assert (r["received"], r["lost"], r["duplicated"], r["reordered"]) == (1_000_000, 0, 0, 0)
    assert "echo" not in r and "echoed" not in r              # only `--echo` adds the return path
    m = nfx_json("nf", "mappings", "--name", name, "--instance", "nf0", "--limit", "1")
    assert m["count"] == 10000


def test_sink_sees_loss_when_the_nf_drops(name):
    # drop the generator's flows with even source ports... a filter on one source port range
    nat = builder.instance(name, "nf0")
    f = L.Filter(saddr=ip_to_be("10.0.1.2"), smask=0xFFFFFFFF, sport=__import__("socket").htons(1024 + 7),
                 proto=17, action=int(L.Action.DROP), flags=L.FILTER_USED)
    # a filter only catches flows with no mark: these flows have none
    nat.gate.put_filter(0, f)
    try:
        r = nfx_json("traffic", "run", "--name", name, "--flows", "100", "--rate", "20000", "--duration", "1")
    finally:
        nat.gate.put_filter(0, L.Filter())
    assert r["lost"] == r["sent"] // 100 and r["lost"] > 0
    assert r["received"] == r["sent"] - r["lost"]


def test_errors_have_exit_codes_and_messages(name):
    r = nfx("nf", "stats", "--name", name, "--instance", "nf9")
    assert r.returncode == 3 and "no NF instance 'nf9'" in r.stderr and "nf0, nf1" in r.stderr
    r = nfx("traffic", "run", "--name", name, "--flows", "0")
    assert r.returncode == 2 and "--flows" in r.stderr
    r = nfx("testbed", "up", "--name", name)
    assert r.returncode == 4 and "already exists" in r.stderr
    r = nfx("testbed", "up", "--name", "Bad_Name")
    assert r.returncode == 2
    r = nfx("testbed", "up", "--name", unique_name(), "--topology", "/nonexistent.json")
    assert r.returncode == 3 and "no topology" in r.stderr
    r = nfx("testbed", "up", "--name", unique_name(), "--nf", "firewall")
    assert r.returncode == 1 and "unknown NF kind" in r.stderr


def test_not_root_is_refused():
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        __import__("sys").executable, "-m", "nfx", "testbed", "status"],
                       capture_output=True, text=True, env={**os.environ, "HOME": "/tmp"})
    assert r.returncode == 5 and "needs root" in r.stderr


def test_status_json(name):
    s = nfx_json("testbed", "status", "--name", name)
    [tb] = s["testbeds"]
    assert tb["status"] == "up" and set(tb["nodes"]) >= {"h1", "h2", "si", "so", "nf0", "nf1"}
    assert all(n["alive"] for n in tb["nodes"].values())


def test_down_leaves_nothing():
    n = unique_name()
    assert nfx("testbed", "up", "--name", n, "--instances", "1").returncode == 0
    rec = registry.load(n)
    nss = rec["created"]["netns"]
    links_before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    r = nfx_json("testbed", "down", "--name", n)
    assert r["removed"]["netns"] == len(nss)
    assert not any(netns.exists(x) for x in nss)
    assert not (PIN_ROOT / n).exists()
    assert not registry.path(n).exists()
    # nothing of ours was ever in the root namespace
    assert n not in links_before


def _describe(pid: int) -> str:
    """A process as `ps` would show it: state, parent and command line (a failure's evidence)."""
    try:
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        return f"{pid} state {stat[0]} ppid {stat[1]}: {cmd}"
    except OSError:
        return f"{pid} gone"


def _ours(name: str) -> list[int]:
    """Processes whose command line names testbed `name` (the CLI, compile children, agents)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if f"\0{name}\0".encode() in f.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("sig,step", [(signal.SIGINT, "links"), (signal.SIGINT, "hosts"),
                                      (signal.SIGTERM, "links"), (signal.SIGINT, "NF nf0")])
def test_interrupted_build_leaves_nothing(sig, step):
    """Ctrl-C (to the whole process group, as a terminal sends it) or SIGTERM while the build
    runs, with the programs still compiling in children or being loaded: no namespace, pin,
    registry entry or process stays."""
    import sys
    n = unique_name()
    # Ctrl-C as at a terminal: a suite started in the background without job control inherits
    # SIGINT ignored (the shell's rule for background jobs), and so would the CLI
    p = subprocess.Popen([sys.executable, "-m", "nfx", "testbed", "up", "--name", n, "--instances", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in p.stdout:
            seen.append(line)
            if step in line:
                os.killpg(p.pid, sig) if sig == signal.SIGINT else p.send_signal(sig)
                break
        p.wait(timeout=120)           # not communicate(): a stray child would hold stdout open
        # a killed child is gone a moment after the CLI (its exit is the kernel's): what stays, stays
        end = time.monotonic() + 3.0
        while _ours(n) and time.monotonic() < end:
            time.sleep(0.05)
        assert _ours(n) == [], [_describe(pid) for pid in _ours(n)]
        assert any(step in line for line in seen), seen
        assert not registry.path(n).exists()
        assert not (PIN_ROOT / n).exists()
        assert not [x for x in os.listdir("/run/netns") if x.startswith(f"{n}-")]
    finally:
        p.stdout.close()
        if p.poll() is None:
            p.kill()
            p.wait()
        if registry.path(n).exists():
            builder.down(n)
