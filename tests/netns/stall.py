"""Stall a veth's receive NAPI on purpose: make it a kernel thread (threaded NAPI), pin it to
one CPU and hold that CPU with a real-time busy loop. Frames redirected into that veth then pile
up in its 256-frame ring, as they do when the CPU that drains it is busy, only for certain."""
import contextlib
import os
import subprocess
import sys
import time

from nfx.loader import netns

HOG = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


def _napi_threads() -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().startswith("napi/"):
                        out.add(int(pid))
            except OSError:
                pass
    return out


@contextlib.contextmanager
def stalled_napi(ns: str, ifname: str, cpu: int, seconds: float):
    """While the body runs (at most `seconds`), nothing drains ifname's receive ring in ns. The
    caller runs on another CPU."""
    before = _napi_threads()
    netns.run(["sh", "-c", f"echo 1 > /sys/class/net/{ifname}/threaded"], ns=ns)
    hog = None
    try:
        new = _napi_threads() - before
        assert len(new) == 1, f"expected one new NAPI thread for {ns}/{ifname}, found {sorted(new)}"
        os.sched_setaffinity(new.pop(), {cpu})
        hog = subprocess.Popen([sys.executable, "-c", HOG, str(cpu), str(seconds)])
        time.sleep(0.05)                  # the hog holds the CPU before the body starts
        yield
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        netns.run(["sh", "-c", f"echo 0 > /sys/class/net/{ifname}/threaded"], ns=ns)
