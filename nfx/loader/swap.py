"""What replacing a running XDP program needs from the kernel (hot upgrade): attach over the
program an interface runs, on several interfaces back to back; park programs on a spare veth
pair so the kernel's XDP dispatcher already holds them; wait for an RCU grace period; name map
types. The attach calls resolve interface names in the calling thread's netns: `replace_all`
enters it once, so the sides of an NF are swapped with no setns between them."""
import ctypes as ct
import time

from . import bpfsys, netns
from .attach import XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE
from .compile import captured_stderr
from .netlink import Netlink

MAP_DEVMAP_HASH = 17
MAP_TYPE_NAMES = {bpfsys.MAP_HASH: "hash", bpfsys.MAP_ARRAY: "array", bpfsys.MAP_PERCPU_HASH: "percpu_hash",
                  bpfsys.MAP_PERCPU_ARRAY: "percpu_array", bpfsys.MAP_LRU_HASH: "lru_hash",
                  bpfsys.MAP_LRU_PERCPU_HASH: "lru_percpu_hash", bpfsys.MAP_DEVMAP: "devmap",
                  MAP_DEVMAP_HASH: "devmap_hash", bpfsys.MAP_RINGBUF: "ringbuf"}
DEVMAP_TYPES = {bpfsys.MAP_DEVMAP, MAP_DEVMAP_HASH}

MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
PARK = ("upg0", "upg1")             # the spare veth pair, in the NF's netns while an upgrade runs

MEMBARRIER_CMD_GLOBAL = 1           # synchronize_rcu(): no XDP run that began before it is still going
SYS_MEMBARRIER = 324
_libc = ct.CDLL("libc.so.6", use_errno=True)


def replace_xdp(ifname: str, fd: int, mode: str) -> int:
    """Attach fd over whatever XDP program `ifname` runs, in the calling thread's netns, in the
    interface's mode ('native' | 'generic'); 0 or -1 (libbpf's message is on stderr)."""
    from bcc.libbcc import lib
    return lib.bpf_attach_xdp(ifname.encode(), fd, MODE_FLAGS.get(mode, 0))


def replace_all(ns: str, ifaces: list[str], fd: int, modes: dict[str, str]) -> tuple[int, list[int], str]:
    """Attach fd on each interface in order, stopping at the first failure; returns (how many
    succeeded, perf_counter_ns before the first and after each success, the failure's message)."""
    done = 0
    log_: list[str] = []
    with netns.enter(ns), captured_stderr(log_):
        stamps = [time.perf_counter_ns()]
        for ifn in ifaces:
            if replace_xdp(ifn, fd, modes[ifn]) != 0:
                break
            stamps.append(time.perf_counter_ns())
            done += 1
    return done, stamps, (log_ or [""])[0].strip()


def park(ns: str, new_fd: int, old_fd: int, mode: str) -> tuple[bool, float, str]:
    """Put both programs on a fresh veth pair in ns (PARK): attaching a program the dispatcher
    does not hold yet, or detaching the last user of one, waits for an RCU grace period inside
    the attach call; parked, a swap is a pointer exchange. Returns (ok, ms the attaches took,
    the failure's message). The pair exists from here on: `unpark` removes it."""
    a, b = PARK
    with Netlink(ns) as nl:
        nl.delete(a, missing_ok=True)
        nl.veth(a, b, up=False)
    log_: list[str] = []
    t = time.perf_counter()
    with netns.enter(ns), captured_stderr(log_):
        ok = replace_xdp(a, new_fd, mode) == 0 and replace_xdp(b, old_fd, mode) == 0
    return ok, (time.perf_counter() - t) * 1e3, (log_ or [""])[0].strip()


def unpark(ns: str) -> None:
    if netns.exists(ns):
        with Netlink(ns) as nl:
            nl.delete(PARK[0], missing_ok=True)


def rcu_sync() -> float:
    """Wait for an RCU grace period; returns the seconds it took."""
    t = time.perf_counter()
    if _libc.syscall(SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        time.sleep(0.1)        # no membarrier: a grace period is far shorter than this
    return time.perf_counter() - t
