"""The baseline: turn a chain testbed's NF node into a plain Linux router, with or without
nftables masquerade (conntrack NAT), on the same veths the XDP NF used; and back."""
import subprocess

from ..errors import KernelFeature
from ..loader import attach, netlink, netns

RULESET = """
table ip nfxbench {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "%s" masquerade
  }
}
"""


def router_config(rec, nf: str = "nf0") -> None:
    """What the kernel needs to route between the NF's two sides: an address on each, h2 as a
    permanent neighbour (no ARP in the measured window), IPv4 forwarding. Harmless while an XDP
    program holds both sides: it takes every frame before the stack sees one."""
    info = rec["nodes"][nf]
    ns = info["ns"]
    inside, outside = info["wiring"]
    in_host = _host_behind(rec, nf, inside)
    out_host = _host_behind(rec, nf, outside)
    gw = rec["nodes"][in_host].get("gateway_addr", "10.0.1.1")
    out_addr = rec["nodes"][out_host]["addr"].split("/")[0].rsplit(".", 1)[0] + ".1/24"
    with netlink.Netlink(ns) as nl:
        nl.addr(inside, f"{gw}/24")
        nl.addr(outside, out_addr)
        nl.neigh(rec["nodes"][out_host]["addr"].split("/")[0], rec["nodes"][out_host]["mac"], outside)
    netns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns)


def undo_router_config(rec, nf: str = "nf0") -> None:
    """router_config's addresses, neighbours and forwarding gone again (the NF's sides have none
    of their own)."""
    info = rec["nodes"][nf]
    ns = info["ns"]
    for ifname in info["wiring"]:
        netns.run(["ip", "-4", "addr", "flush", "dev", ifname], ns=ns)
        netns.run(["ip", "neigh", "flush", "dev", ifname, "nud", "permanent"], ns=ns)
    netns.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"], ns=ns)


def to_kernel_router(rec, nf: str = "nf0") -> None:
    """Take the XDP program off both sides; the stub goes on the inside port because the
    generator's frames arrive there as XDP redirects. With router_config the kernel then
    forwards between the two sides."""
    info = rec["nodes"][nf]
    ns = info["ns"]
    inside, outside = info["wiring"]
    for ifname in (inside, outside):
        attach.detach_xdp(ns, ifname)
    attach.attach_xdp_pinned(ns, inside, rec["stub"])


def masquerade(rec, on: bool, nf: str = "nf0") -> None:
    info = rec["nodes"][nf]
    ns = info["ns"]
    if on:
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=RULESET % info["wiring"][1],
                           capture_output=True, text=True)
        if r.returncode:
            raise KernelFeature(f"nftables masquerade could not be set up: {r.stderr.strip()}")
    else:
        netns.run(["nft", "delete", "table", "ip", "nfxbench"], ns=ns, check=False)


def _host_behind(rec, nf: str, ifname: str) -> str:
    for peer, name in rec["nodes"][nf]["ifaces"].items():
        if name == ifname:
            return peer
    raise KeyError(ifname)
