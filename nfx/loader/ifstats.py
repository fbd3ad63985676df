"""Kernel counters of one interface, read in-process from sockets opened in its netns once:
ethtool's statistics (SIOCETHTOOL GSTATS) and the link's packet counters (RTM_GETSTATS). A read
is a few syscalls, cheap enough to poll between two release calls."""
import ctypes as ct
import os
import fcntl
import socket
import struct
import threading

from ..errors import NfxError, NotFound
from . import netns

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSTATS = 0x1D
ETHTOOL_GSSET_INFO = 0x37
ETH_SS_STATS = 1
ETH_GSTRING_LEN = 32

RTM_GETSTATS = 94
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
IFLA_STATS_LINK_64 = 1
STATS64 = struct.Struct("=4Q")           # rx_packets, tx_packets, rx_bytes, tx_bytes (the head of it)

# a veth's receive ring (VETH_RING_SIZE): frames redirected into a peer beyond it are dropped
VETH_RING = 256


class IfCounters:
    """One interface's counters. `ethtool(name)` is a driver statistic by its ethtool -S name,
    `tx_packets()` the link's count of packets sent. Safe to share between threads (a move's
    releases and its status read the same rings): each read holds the object's lock, because
    two threads on one netlink socket take each other's answers, and one of them then waits
    forever (seen: an agent that stopped answering for 60 s)."""

    TIMEOUT_S = 2.0        # an answer the kernel never gives is an error, not a hang

    def __init__(self, ifname: str, ns: str | None = None):
        self.ifname, self.ns = ifname, ns
        with netns.enter(ns):
            try:
                self.ifindex = socket.if_nametoindex(ifname)
            except OSError:
                raise NotFound(f"no interface {ifname!r} in netns {ns or '(current)'}") from None
            self._ioc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # bound to this netns
            self._nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._nl.settimeout(self.TIMEOUT_S)
        self._lock = threading.Lock()
        self._seq = 0
        self.names = self._strings()
        self._index = {n: i for i, n in enumerate(self.names)}
        self._stats = ct.create_string_buffer(8 + 8 * len(self.names))

    def close(self) -> None:
        self._ioc.close()
        self._nl.close()

    def _ethtool(self, buf) -> None:
        ifreq = struct.pack("16sP", self.ifname.encode(), ct.addressof(buf))
        try:
            fcntl.ioctl(self._ioc.fileno(), SIOCETHTOOL, ifreq + bytes(40 - len(ifreq)))
        except OSError as e:
            raise NfxError(f"ethtool on {self.ifname}: {e.strerror}") from None

    def _strings(self) -> list[str]:
        info = ct.create_string_buffer(struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_STATS, 0))
        self._ethtool(info)
        n = struct.unpack_from("=I", info, 16)[0]
        gs = ct.create_string_buffer(struct.pack("=III", ETHTOOL_GSTRINGS, ETH_SS_STATS, n) + bytes(n * ETH_GSTRING_LEN))
        self._ethtool(gs)
        raw = gs.raw[12:]
        return [raw[i * ETH_GSTRING_LEN:(i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0].decode() for i in range(n)]

    def ethtool(self, *names: str) -> tuple[int, ...]:
        """Driver statistics by name, read in one call."""
        try:
            idx = [self._index[n] for n in names]
        except KeyError as e:
            raise NotFound(f"{self.ifname} has no ethtool statistic {e.args[0]!r}") from None
        with self._lock:
            struct.pack_into("=II", self._stats, 0, ETHTOOL_GSTATS, len(self.names))
            self._ethtool(self._stats)
            return tuple(struct.unpack_from("=Q", self._stats, 8 + 8 * i)[0] for i in idx)

    def tx_packets(self) -> int:
        with self._lock:
            try:
                return self._tx_packets()
            except socket.timeout:
                raise NfxError(f"link statistics of {self.ifname}: no answer within {self.TIMEOUT_S:g} s") from None

    def _tx_packets(self) -> int:
        self._seq += 1
        body = struct.pack("=BBHII", socket.AF_UNSPEC, 0, 0, self.ifindex, 1 << (IFLA_STATS_LINK_64 - 1))
        self._nl.send(struct.pack("=IHHII", 16 + len(body), RTM_GETSTATS, NLM_F_REQUEST, self._seq, 0) + body)
        while True:
            msg = self._nl.recv(4096)
            length, kind, _, seq, _ = struct.unpack_from("=IHHII", msg)
            if seq != self._seq:
                continue                    # an answer to a call given up on before
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", msg, 16)[0]
                raise NfxError(f"link statistics of {self.ifname}: {os.strerror(err)}")
            off = 16 + 12                   # nlmsghdr, if_stats_msg
            while off + 4 <= length:
                alen, atype = struct.unpack_from("=HH", msg, off)
                if atype == IFLA_STATS_LINK_64:
                    return STATS64.unpack_from(msg, off + 4)[1]
                off += (alen + 3) & ~3
            raise NfxError(f"link statistics of {self.ifname}: no IFLA_STATS_LINK_64 in the answer")


class VethRing:
    """How full the receive ring of a veth's peer is, seen from this end: frames this end put
    into it (tx_queue_0_xdp_xmit) less frames the peer took out (this end's tx_packets, which a
    veth counts where the peer consumes). Exact when the stack sends nothing on this end (nfx's
    netns have no addresses on NF ports and IPv6 off); the counters are read consumer first, so
    a race only makes the fill look larger."""

    def __init__(self, ifname: str, ns: str | None = None):
        self.counters = IfCounters(ifname, ns)
        self.counters.ethtool("tx_queue_0_xdp_xmit")     # a veth, or say so now

    def fill(self) -> int:
        consumed = self.counters.tx_packets()
        produced, = self.counters.ethtool("tx_queue_0_xdp_xmit")
        return max(0, produced - consumed)

    def close(self) -> None:
        self.counters.close()
