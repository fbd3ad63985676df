"""Testbeds for integration tests: unique short names, always taken down."""
import contextlib
import json
import secrets
import subprocess
import sys

from nfx.testbed import builder, state


def unique_name(prefix: str = "t") -> str:
    return prefix + secrets.token_hex(3)


@contextlib.contextmanager
def running_testbed(topo: str = "sharp", nf: str = "nat", instances: int | None = None, max_flows: int = 65536,
                    nf_set: tuple[str, ...] = ()):
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
        r = nfx(*args, "--json", timeout=300)
        if r.returncode:
            raise AssertionError(f"nfx testbed up failed ({r.returncode}): {r.stderr}")
        yield state.load(name)
    finally:
        if state.path(name).exists():
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
