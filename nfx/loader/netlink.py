"""Links, addresses, routes and neighbours through rtnetlink (pyroute2): one socket per namespace,
no `ip` process per change, and failures as NfxError subclasses that say what was being done."""
import errno
import os
from contextlib import contextmanager

from ..errors import AlreadyExists, KernelFeature, NeedRoot, NfxError, NotFound
from . import netns

NUD_PERMANENT = 0x80


def error(code: int, what: str) -> NfxError:
    """The NfxError for a netlink errno while doing `what`."""
    msg = f"cannot {what}: {os.strerror(code)}"
    if code == errno.EEXIST:
        return AlreadyExists(msg)
    if code in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
        return NotFound(msg)
    if code in (errno.EPERM, errno.EACCES):
        return NeedRoot(msg, hint="run as root")
    if code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
        return KernelFeature(msg)
    return NfxError(msg)


class Netlink:
    """An rtnetlink socket in netns `ns` (None: the caller's). Use as a context manager."""

    def __init__(self, ns: str | None = None):
        from pyroute2 import IPRoute
        self.ns = ns
        self.where = f"netns {ns or '(root)'}"
        # made while this thread is in `ns`, the socket stays there; pyroute2's own netns= forks a
        # process for every socket
        with netns.enter(ns):
            self.ipr = IPRoute()      # pyroute2's, for requests not wrapped here (tc, link dumps)

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _do(self, what: str, method: str, *args, **kw):
        from pyroute2 import NetlinkError
        try:
            return getattr(self.ipr, method)(*args, **kw)
        except NetlinkError as e:
            raise error(e.code, f"{what} in {self.where}") from None

    @contextmanager
    def _ns_fd(self, at: "Netlink"):
        """{net_ns_fd: ...} for a link made into the netns of socket `at` ({} for this one)."""
        if at.ns == self.ns:
            yield {}
            return
        try:
            fd = os.open(f"{netns.NETNS_RUN}/{at.ns}", os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"network namespace {at.ns!r} does not exist") from None
        try:
            yield {"net_ns_fd": fd}
        finally:
            os.close(fd)

    def index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise NotFound(f"no interface {ifname!r} in {self.where}")
        return found[0]

    def veth(self, name: str, peer: str, peer_at: "Netlink | None" = None, up: bool = True, queues: int = 1) -> None:
        """A veth pair: `name` here, `peer` in the netns of socket `peer_at` (None: here too); both up
        unless `up` is False. With `queues` > 1 both ends get that many rx and tx queues, all
        enabled (the kernel's default allocates one per CPU but enables one); a frame redirected
        into a veth lands in rx queue (sending CPU % queues), each rx queue with its own NAPI."""
        at = peer_at or self
        q = {"num_rx_queues": queues, "num_tx_queues": queues} if queues > 1 else {}
        with self._ns_fd(at) as there:
            self._do(f"add veth {name} (peer {peer} in {at.where})", "link", "add", ifname=name, kind="veth",
                     peer={"ifname": peer, **q, **there}, **q, **({"state": "up"} if up else {}))
        if up:
            at.up(peer)         # pyroute2 sends the peer's attributes only, not its flags

    def bridge(self, name: str) -> None:
        self._do(f"add bridge {name}", "link", "add", ifname=name, kind="bridge")

    def mtu(self, ifname: str, mtu: int) -> None:
        self._do(f"set {ifname} mtu {mtu}", "link", "set", index=self.index(ifname), mtu=mtu)

    def set_mac(self, ifname: str, mac: str) -> None:
        self._do(f"set {ifname} address {mac}", "link", "set", index=self.index(ifname), address=mac)

    def vxlan(self, name: str, vni: int, local: str, remote: str, at: "Netlink", port: int = 4789) -> None:
        """A VXLAN device `name` in the netns of socket `at`, whose UDP socket stays in this one:
        its frames go out, and come in, by this namespace's routes between `local` and `remote`."""
        with self._ns_fd(at) as there:
            self._do(f"add vxlan {name} (vni {vni}, {local} -> {remote}) in {at.where}", "link", "add", ifname=name,
                     kind="vxlan", vxlan_id=vni, vxlan_local=local, vxlan_group=remote, vxlan_port=port,
                     vxlan_learning=0, **there)

    def tx_dropped(self) -> int:
        """Frames the interfaces here could not send, summed (a veth: its peer's backlog was
        full, the receiving CPU behind)."""
        return sum(m.get_attr("IFLA_STATS64")["tx_dropped"] for m in self._do("read the links' counters", "get_links"))

    def shape(self, ifname: str, rate_mbit: float, queue_ms: float = 20.0) -> None:
        """A token bucket (tbf) on `ifname`'s egress: `rate_mbit`, a burst of 4 ms of it (one
        timer tick at HZ 250, at least 64 KiB), and a queue that holds `queue_ms` of it, past
        which packets are dropped: a link of that capacity."""
        rate = rate_mbit * 1e6 / 8          # bytes a second
        burst = max(64 << 10, int(rate * 0.004))
        self._do(f"shape {ifname} to {rate_mbit:g} Mbit/s", "tc", "add", "tbf", self.index(ifname), handle="1:",
                 rate=f"{rate_mbit * 1e6:.0f}bit", burst=burst, limit=int(burst + rate * queue_ms / 1e3))

    def up(self, *ifnames: str) -> None:
        for n in ifnames:
            self._do(f"set {n} up", "link", "set", index=self.index(n), state="up")

    def master(self, ifname: str, bridge: str) -> None:
        """Enslave `ifname` to `bridge` and set it up."""
        self._do(f"set {ifname} master {bridge}", "link", "set", index=self.index(ifname),
                 master=self.index(bridge), state="up")

    def addr(self, ifname: str, cidr: str) -> None:
        """An IPv4 address "a.b.c.d/len" on `ifname`."""
        address, _, plen = cidr.partition("/")
        self._do(f"add address {cidr} to {ifname}", "addr", "add", index=self.index(ifname), address=address,
                 prefixlen=int(plen or 32))

    def route(self, dst: str, via: str) -> None:
        """A route to `dst` ("default" or "a.b.c.d/len") through gateway `via`."""
        where = {} if dst == "default" else {"dst": dst}
        self._do(f"add route {dst} via {via}", "route", "add", gateway=via, **where)

    def route_del(self, dst: str) -> None:
        """The route to `dst` ("a.b.c.d/len"), if there is one."""
        net, _, plen = dst.partition("/")
        try:
            self.ipr.route("del", dst=net, dst_len=int(plen or 32))
        except Exception:       # noqa: BLE001 (pyroute2's NetlinkError: no such route, which is the goal)
            pass

    def neigh(self, addr: str, lladdr: str, ifname: str) -> None:
        """A permanent neighbour entry (replacing any): `addr` is at `lladdr` on `ifname`."""
        self._do(f"set neighbour {addr} lladdr {lladdr} on {ifname}", "neigh", "replace", dst=addr, lladdr=lladdr,
                 ifindex=self.index(ifname), state=NUD_PERMANENT)

    def neigh_forget(self, addr: str, ifname: str) -> None:
        """Drop the neighbour entry of `addr` on `ifname`, if any (one left FAILED by an
        address that was unreachable a moment ago answers "No route to host" until it times
        out; gone, the next packet resolves it afresh)."""
        try:
            self.ipr.neigh("del", dst=addr, ifindex=self.index(ifname))
        except Exception:       # noqa: BLE001 (pyroute2's NetlinkError: no entry, which is the goal)
            pass

    def delete(self, ifname: str, missing_ok: bool = False) -> None:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            if missing_ok:
                return
            raise NotFound(f"no interface {ifname!r} in {self.where}")
        self._do(f"delete {ifname}", "link", "del", index=found[0])


class Sockets(dict):
    """One Netlink per namespace, opened on first use; for a build that touches many."""

    def __missing__(self, ns: str | None) -> Netlink:
        nl = self[ns] = Netlink(ns)
        return nl

    def close(self) -> None:
        for nl in self.values():
            nl.close()
        self.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
