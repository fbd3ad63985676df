"""Network namespaces: enter one for the calling thread, run commands in one, create and delete."""
import contextlib
import ctypes
import os
import subprocess
import threading

from ..errors import NfxError, NotFound

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000
NETNS_RUN = "/var/run/netns"
_local = threading.local()


def _root_fd() -> int:
    # the namespace this thread started in; opened once per thread
    if not hasattr(_local, "root"):
        _local.root = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    return _local.root


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise NfxError(f"cannot enter netns {what}: {os.strerror(e)}")


@contextlib.contextmanager
def enter(name: str | None):
    """Run the body in netns `name` (None: stay). BCC resolves interface names in the calling
    thread's netns, so attach/devmap/test-run calls go inside this."""
    if name is None:
        yield
        return
    root = _root_fd()
    path = f"{NETNS_RUN}/{name}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NotFound(f"network namespace {name!r} does not exist") from None
    try:
        _setns(fd, name)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        _setns(root, "(original)")


def exists(name: str) -> bool:
    return os.path.exists(f"{NETNS_RUN}/{name}")


def run(cmd: list[str], ns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + cmd
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NfxError(f"command failed ({r.returncode}): {' '.join(full)}\n{r.stderr.strip()}")
    return r.stdout


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    # `ip -n` switches netns for the netlink socket only; `ip netns exec` would also remount
    # /sys, hiding bpffs pins
    return run(["ip", *(["-n", ns] if ns else []), *args], check=check)


def add(name: str) -> None:
    run(["ip", "netns", "add", name])
    ip("link", "set", "lo", "up", ns=name)
    # no IPv6 neighbour discovery or MLD noise in the counters
    run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"], ns=name)


def delete(name: str) -> None:
    if exists(name):
        run(["ip", "netns", "del", name], check=False)


def ifindex(ifname: str, ns: str | None = None) -> int:
    import socket
    with enter(ns):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            raise NotFound(f"no interface {ifname!r} in netns {ns or '(root)'}") from None


def mac(ifname: str, ns: str | None = None) -> bytes:
    out = ip("-o", "link", "show", "dev", ifname, ns=ns)
    return bytes.fromhex(out.split("link/ether")[1].split()[0].replace(":", ""))
