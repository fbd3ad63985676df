"""Namespaces and links through pyroute2 (loader/netns.py, loader/netlink.py), checked with `ip`
itself: what the builder asks for is what the kernel holds, and each failure is the typed error
that says what was being done. Every namespace made here is removed, even on failure."""
import contextlib
import json

import pytest

from nfx import errors as E
from nfx.loader import netlink, netns
from tests.netns.tbutil import sh, unique_name


@contextlib.contextmanager
def namespaces(n: int):
    names = [unique_name("xl") for _ in range(n)]
    try:
        for ns in names:
            netns.add(ns)
        yield names
    finally:
        for ns in names:
            netns.delete(ns)
        assert not any(netns.exists(ns) for ns in names)


def links(ns: str) -> dict[str, dict]:
    return {ln["ifname"]: ln for ln in json.loads(netns.ip("-j", "-d", "link", "show", ns=ns))}


def test_a_new_namespace_has_lo_up_and_no_ipv6():
    with namespaces(1) as (a,):
        assert "UP" in links(a)["lo"]["flags"]
        out = sh(a, "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6").stdout
        assert out.split() == ["1", "1"]
        with pytest.raises(E.AlreadyExists, match=a):
            netns.add(a)


def test_links_addresses_routes_neighbours_bridge():
    with namespaces(2) as (a, b), netlink.Sockets() as nls:
        nls[a].veth("eth0", "si", nls[b])                 # across, both up
        nls[a].veth("gen0", "gen1")                        # inside one namespace
        nls[a].veth("mg", "nf0", nls[b], up=False)
        nls[a].addr("eth0", "10.0.1.2/24")
        nls[a].neigh("10.0.1.1", "02:00:00:00:01:01", "eth0")
        nls[a].route("default", "10.0.1.1")
        nls[a].route("10.9.0.0/24", "10.0.1.7")
        nls[b].bridge("br0")
        nls[b].addr("br0", "10.255.0.254/24")
        nls[b].up("br0")
        nls[b].master("nf0", "br0")

        la, lb = links(a), links(b)
        assert all("UP" in la[d]["flags"] for d in ("eth0", "gen0", "gen1")) and "UP" in lb["si"]["flags"]
        assert "UP" not in la["mg"]["flags"] and lb["nf0"].get("master") == "br0" and "UP" in lb["nf0"]["flags"]
        assert lb["si"]["link_index"] == la["eth0"]["ifindex"] and la["gen0"]["link"] == "gen1"
        assert netns.mac("eth0", a).hex(":") == la["eth0"]["address"]
        assert netns.ifindex("si", b) == lb["si"]["ifindex"]
        addrs = {i["ifname"]: [f"{x['local']}/{x['prefixlen']}" for x in i["addr_info"]]
                 for i in json.loads(netns.ip("-j", "addr", "show", ns=a))}
        assert addrs["eth0"] == ["10.0.1.2/24"]
        routes = {r["dst"]: r.get("gateway") for r in json.loads(netns.ip("-j", "route", "show", ns=a))}
        assert routes["default"] == "10.0.1.1" and routes["10.9.0.0/24"] == "10.0.1.7"
        neigh = json.loads(netns.ip("-j", "neigh", "show", "dev", "eth0", ns=a))
        assert neigh == [{"dst": "10.0.1.1", "lladdr": "02:00:00:00:01:01", "state": ["PERMANENT"]}]

        nls[a].delete("gen0")
        nls[a].delete("gen0", missing_ok=True)
        assert "gen0" not in links(a) and "gen1" not in links(a)


def test_failures_are_typed_and_say_what_failed():
    with namespaces(2) as (a, b), netlink.Sockets() as nls:
        nls[a].veth("eth0", "si", nls[b])
        with pytest.raises(E.AlreadyExists, match=f"cannot add veth eth0 .* in netns {a}: File exists"):
            nls[a].veth("eth0", "zz", nls[b])
        with pytest.raises(E.NotFound, match=f"no interface 'nope' in netns {a}"):
            nls[a].up("nope")
        with pytest.raises(E.NotFound):
            nls[a].delete("nope")
        with pytest.raises(E.NfxError, match="cannot add route 10.8.0.0/24 via 10.77.0.1 .*unreachable"):
            nls[a].route("10.8.0.0/24", "10.77.0.1")
        with pytest.raises(E.NotFound, match="no interface 'zz'"):
            netns.mac("zz", a)
    with pytest.raises(E.NotFound, match="does not exist"):
        netlink.Netlink(unique_name("xl"))
