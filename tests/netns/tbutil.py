"""Testbeds for integration tests: unique short names, always taken down."""
import contextlib
import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

from nfx import registry
from nfx.control.switch import Switch
from nfx.testbed import builder
from nfx.testbed.drops import path_drops
from nfx.traffic.report import measure

TESTBED_MAX_FLOWS = 65536       # the NF maps' size in the tests' testbeds (tests/warm.py builds it ahead)


def unique_name(prefix: str = "t") -> str:
    return prefix + secrets.token_hex(3)


@contextlib.contextmanager
def running_testbed(topo: str = "sharp", nf: str = "nat", instances: int | None = None, max_flows: int = TESTBED_MAX_FLOWS,
                    nf_set: tuple[str, ...] = (), statelet_ring_kib: int | None = None,
                    hold_slots: int | None = None, queues: int | None = None, mgmt: str | None = None):
    """A testbed built by `nfx testbed up` in a child process: BCC keeps every BPF object it loads
    (and its fds) until its process exits, so building in the test process would leave ~50-120 fds
    per testbed open for the rest of the run, and past fd 1023 select() fails."""
    name = unique_name()
    try:
        args = ["testbed", "up", "--name", name, "--topology", topo, "--nf", nf, "--max-flows", str(max_flows)]
        if instances is not None:
            args += ["--instances", str(instances)]
        for setting in nf_set:
            args += ["--nf-set", setting]
        if statelet_ring_kib is not None:
            args += ["--statelet-ring-kib", str(statelet_ring_kib)]
        if hold_slots is not None:
            args += ["--hold-slots", str(hold_slots)]
        if queues is not None:
            args += ["--queues", str(queues)]
        if mgmt is not None:
            args += ["--mgmt", mgmt]
        r = nfx(*args, "--json", timeout=300)
        if r.returncode:
            raise AssertionError(f"nfx testbed up failed ({r.returncode}): {r.stderr}")
        yield registry.load(name)
    finally:
        if registry.path(name).exists():
            builder.down(name)


def sh(ns: str, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} in {ns} failed: {r.stderr or r.stdout}")
    return r


def py(ns: str, code: str, timeout: float = 30) -> str:
    return sh(ns, sys.executable, "-c", code, timeout=timeout).stdout


def nfx(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfx", *args], capture_output=True, text=True, timeout=timeout)


def nfx_json(*args: str, timeout: float = 120) -> dict:
    r = nfx(*args, "--json", timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def path_errors(name: str) -> dict:
    """Where packets may have gone, for a failed test's message: every nonzero drop or error
    counter of every interface of the testbed (ethtool -S, cumulative since the testbed came up;
    a veth counts a full peer ring as xdp_xmit_errors) and each NF instance's reason counters."""
    out = {}
    rec = registry.load(name)
    for node, info in rec.get("nodes", {}).items():
        ns = info.get("ns")
        if not ns:
            continue
        links = json.loads(sh(ns, "ip", "-j", "link", check=False).stdout or "[]")
        for link in links:
            stats = sh(ns, "ethtool", "-S", link["ifname"], check=False).stdout
            for line in stats.splitlines():
                key, _, val = line.rpartition(":")
                key = key.strip()
                if ("drop" in key or "err" in key) and val.strip().isdigit() and int(val) and \
                        not key.endswith("xdp_drops"):        # XDP_DROP verdicts: the NFs' and the sink's own
                    out[f"{node}/{link['ifname']}:{key}"] = int(val)
        try:
            if info.get("role") == "nf":
                st = builder.instance(name, node).stats()
            elif info.get("role") == "switch" and info.get("pin"):
                # a switch's drops (a rule miss, a rule id gone) are counted there, not at a port
                sw = Switch.open(node, ns, Path(info["pin"]))
                try:
                    st = sw.stats()
                finally:
                    sw.close()
            else:
                continue
            out[f"{node}/reasons"] = {k: v for k, v in st.items() if v}
        except Exception as e:            # the message must not hide the failure it explains
            out[f"{node}/reasons"] = f"unreadable: {e}"
    return out


class Rigs:
    """Generators and sinks kept open for a test module: opening one compiles two programs
    (~2.4 s), and a module of moves would pay that on every move. One rig per testbed (the
    sink replaces the stub on the receiving host); asking for another flow count replaces it."""

    def __init__(self):
        self.open: dict[str, tuple] = {}

    def get(self, name: str, flows: int):
        cur = self.open.get(name)
        if cur and cur[0] != flows:
            self.drop(name)
            cur = None
        if cur is None:
            from nfx.traffic.rig import rig
            cm = rig(name, flows)
            gen, sink = cm.__enter__()
            self.open[name] = cur = (flows, cm, gen, sink)
        return cur[2], cur[3]

    def drop(self, name: str) -> None:
        cur = self.open.pop(name, None)
        if cur:
            cur[1].__exit__(None, None, None)

    def close(self) -> None:
        for name in list(self.open):
            self.drop(name)


def under_traffic(name: str, gen, sink, rate: float, duration: float, at: float, action, judged=lambda r, a: True,
                  what: str = "action", echo=None):
    """Run `action()` `at` seconds into `duration` s of traffic at `rate`; the sink is read once
    the action has ended (what it still held when the traffic stopped is judged after its
    release: a slow move on a loaded machine outlasts the traffic). Returns (what action
    returned, the sink's figures); what it raises comes out once the traffic is over. When `judged(result, returned)` says the
    run went wrong, the path's counters and a late count of the sink are printed (shown by
    pytest on failure)."""
    out, done = {}, threading.Event()
    t = threading.Thread(target=lambda: out.setdefault("r", measure(gen, sink, rate, duration, 1.0, echo=echo,
                                                                    before_read=lambda: done.wait(60))))
    t.start()
    time.sleep(at)
    try:
        a = action()
    finally:
        done.set()
        t.join()
    r = out["r"]
    if not judged(r, a):
        time.sleep(1.0)
        r["received_1s_later"] = sink.received_total()
        r["path_errors"] = path_errors(name)
        r["path_drops"] = path_drops(name)      # tx_dropped, which ethtool -S of a veth leaves out
        print(f"{what} with a loss:", json.dumps({what: a, "result": r}, default=str))
    return a, r
