"""An instance's failure, made on purpose (the failover bench and tests, the orchestration
loop's failure scenario): its agent SIGKILLed, then its XDP program detached from every
data-plane port, as a machine that died would leave it."""
import os
import signal
import time

from .. import registry
from ..loader import attach
from ..procs import agents


def kill_instance(name: str, inst: str, times: dict | None = None) -> float:
    """SIGKILL the instance's agent, then detach its XDP program from every data-plane port: the
    instance is gone. Returns when (time.monotonic) the program stopped forwarding; `times`, if
    given, gets "sigkill" and "detached" (time.monotonic): between the two the program still
    forwards and counts, with no agent to share what it counted."""
    rec = registry.load(name)
    node = rec["nodes"][inst]
    pid = agents.pid_of(rec, inst)
    t_sig = time.monotonic()
    if pid:
        os.kill(pid, signal.SIGKILL)
    for ifname in node["ifaces"].values():
        attach.detach_xdp(node["ns"], ifname)
    t = time.monotonic()
    if times is not None:
        times.update(sigkill=t_sig, detached=t)
    if pid:
        agents.wait_gone(pid)
    return t
