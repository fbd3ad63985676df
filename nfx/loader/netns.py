"""Network namespaces: create (pyroute2) and delete them without a process per call, enter one for
the calling thread, look up an interface in one, and run the tools netlink does not replace
(ethtool, nft, sysctl) inside one."""
import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import threading

from ..errors import AlreadyExists, NfxError, NotFound

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
    thread's netns, so attach/devmap/test-run calls go inside this. Nests: leaving returns to
    the netns the thread was in before (its fd is held open by the outer call)."""
    prev = getattr(_local, "current", None)          # (name, fd) of the enclosing enter
    if name is None or (prev and prev[0] == name):
        yield
        return
    root = _root_fd()
    try:
        fd = os.open(f"{NETNS_RUN}/{name}", os.O_RDONLY)
    except FileNotFoundError:
        raise NotFound(f"network namespace {name!r} does not exist") from None
    try:
        _setns(fd, name)
        _local.current = (name, fd)
        try:
            yield
        finally:
            _local.current = prev
            _setns(prev[1] if prev else root, prev[0] if prev else "(original)")
    finally:
        os.close(fd)


def exists(name: str) -> bool:
    return os.path.exists(f"{NETNS_RUN}/{name}")


def run(cmd: list[str], ns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + cmd
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NfxError(f"command failed ({r.returncode}): {' '.join(full)}\n{r.stderr.strip()}")
    return r.stdout


def xps_by_cpu(name: str | None, ifname: str, queues: int) -> None:
    """XPS on `ifname`: CPU c transmits on queue c % queues, the queue a redirected XDP frame
    picks on that CPU. A forwarded skb (a tc switch's redirect) then stays in its CPU's queue
    at the next veth; without it the kernel picks by flow hash, the next NAPI may run on
    another CPU than the previous hop's, and a flow gets two queues further on (reordered)."""
    cmds = []
    for i in range(queues):
        mask = sum(1 << c for c in range(os.cpu_count() or 1) if c % queues == i)
        cmds.append(f"echo {_cpumask(mask)} > /sys/class/net/{ifname}/queues/tx-{i}/xps_cpus")
    # sysfs shows the netns of whoever mounted it: `ip netns exec` remounts it
    run(["sh", "-c", " && ".join(cmds)], ns=name)


def rps_one_cpu(name: str | None, ifname: str, cpu: int = 0) -> None:
    """RPS on `ifname`'s rx queue: every frame it receives goes through CPU `cpu`'s backlog, in
    the order it arrived. A veth without XDP hands each frame to the backlog of the CPU that sent
    it, so frames sent on two CPUs can be processed in the other order."""
    run(["sh", "-c", f"echo {_cpumask(1 << cpu)} > /sys/class/net/{ifname}/queues/rx-0/rps_cpus"], ns=name)


def _cpumask(mask: int) -> str:
    """A CPU mask as sysfs writes it: hex, in comma-separated 32-bit groups."""
    groups = []
    while True:
        groups.append(f"{mask & 0xFFFFFFFF:x}")
        mask >>= 32
        if not mask:
            return ",".join(reversed(groups))


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    """`ip` itself, for tests and one-off checks; nfx changes links through loader/netlink.py."""
    # `ip -n` switches netns for the netlink socket only; `ip netns exec` would also remount
    # /sys, hiding bpffs pins
    return run(["ip", *(["-n", ns] if ns else []), *args], check=check)


def add(name: str) -> None:
    """A new netns with lo up and IPv6 off (no neighbour discovery or MLD noise in the counters).
    A short-lived thread unshares into it, so the sysctls and lo are set from inside without a
    process; pyroute2 bind-mounts it by name as `ip netns add` does."""
    from pyroute2 import IPRoute, netns as pyns
    if exists(name):
        raise AlreadyExists(f"network namespace {name!r} already exists")
    failed: list[BaseException] = []

    def make():
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
            pyns.attach(name, threading.get_native_id())
            # /proc/sys/net is the calling thread's netns: this one's
            for conf in ("all", "default"):
                with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                    f.write("1")
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        except BaseException as e:
            failed.append(e)

    t = threading.Thread(target=make, name=f"netns-{name}")
    t.start()
    t.join()
    if failed:
        delete(name)
        raise NfxError(f"cannot create network namespace {name}: {failed[0]}")


MNT_DETACH = 2


def delete(name: str) -> None:
    """Unmount and remove the name, as `ip netns del` and pyroute2's netns.remove do (done here:
    `testbed down` need not load pyroute2 for it); the netns goes with its last user, its veths
    and their programs with it."""
    path = f"{NETNS_RUN}/{name}"
    if exists(name):
        _libc.umount2(path.encode(), MNT_DETACH)
        with contextlib.suppress(OSError):
            os.unlink(path)


def inode(name: str | None) -> int:
    """The netns's identity while it exists (a name may be reused by a new one)."""
    return os.stat(f"{NETNS_RUN}/{name}" if name else "/proc/self/ns/net").st_ino


def ifindex(ifname: str, ns: str | None = None) -> int:
    with enter(ns):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            raise NotFound(f"no interface {ifname!r} in netns {ns or '(root)'}") from None


SIOCGIFHWADDR = 0x8927


def mac(ifname: str, ns: str | None = None) -> bytes:
    with enter(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            ifr = fcntl.ioctl(s, SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
        except OSError:
            raise NotFound(f"no interface {ifname!r} in netns {ns or '(root)'}") from None
    return ifr[18:24]         # struct ifreq: name[16], then sockaddr (family u16, data)
