"""The baseline: turn a chain testbed's NF node into a plain Linux router, with or without
nftables masquerade (conntrack NAT), on the same veths the XDP NAT used."""
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


def to_kernel_router(rec, nf: str = "nf0") -> None:
    """Detach the XDP NF; the stub stays on the inside port because the generator's frames arrive
    there as XDP redirects. The kernel then forwards between the two sides."""
    info = rec["nodes"][nf]
    ns = info["ns"]
    inside, outside = info["wiring"]
    for ifname in (inside, outside):
        attach.detach_xdp(ns, ifname)
    attach.attach_xdp_pinned(ns, inside, rec["stub"])
    in_host = _host_behind(rec, nf, inside)
    out_host = _host_behind(rec, nf, outside)
    gw = rec["nodes"][in_host].get("gateway_addr", "10.0.1.1")
    out_addr = rec["nodes"][out_host]["addr"].split("/")[0].rsplit(".", 1)[0] + ".1/24"
    with netlink.Netlink(ns) as nl:
        nl.addr(inside, f"{gw}/24")
        nl.addr(outside, out_addr)
        # the router resolves h2 without ARP in the measured window
        nl.neigh(rec["nodes"][out_host]["addr"].split("/")[0], rec["nodes"][out_host]["mac"], outside)
    netns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns)


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
