"""Attach and detach XDP programs and tc clsact filters inside a named netns."""
import logging
import os

from ..errors import KernelFeature
from . import bpfsys, netlink, netns

log = logging.getLogger("nfx.loader")

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2


def attach_xdp(ns: str | None, ifname: str, fn, allow_generic: bool = True) -> str:
    """Native mode first; generic only if native fails (with a warning). Returns the mode."""
    return attach_xdp_fd(ns, ifname, fn.fd, allow_generic)


def attach_xdp_fd(ns: str | None, ifname: str, fd: int, allow_generic: bool = True) -> str:
    from bcc.libbcc import lib
    with netns.enter(ns):
        if lib.bpf_attach_xdp(ifname.encode(), fd, XDP_FLAGS_DRV_MODE) == 0:
            return "native"
        if not allow_generic:
            raise KernelFeature(f"native XDP on {ifname} in {ns} failed (see the message above)")
        log.warning("native XDP on %s failed; using generic mode (about 2.5x slower)", ifname)
        if lib.bpf_attach_xdp(ifname.encode(), fd, XDP_FLAGS_SKB_MODE) == 0:
            return "generic"
        raise KernelFeature(f"cannot attach XDP to {ifname} in {ns} (see the message above)")


def detach_xdp(ns: str | None, ifname: str, mode: str = "native") -> None:
    import bcc
    flags = XDP_FLAGS_SKB_MODE if mode == "generic" else 0
    if ns is not None and not netns.exists(ns):
        return
    with netns.enter(ns):
        try:
            bcc.BPF.remove_xdp(ifname.encode(), flags)
        except Exception as e:
            # the interface may already be gone with its namespace
            log.debug("detach xdp %s: %s", ifname, e)


def attach_tc(ns: str | None, ifname: str, fn, direction: str = "ingress") -> None:
    """clsact qdisc plus a direct-action cls_bpf filter."""
    from pyroute2 import NetlinkError
    parent = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}[direction]
    with netlink.Netlink(ns) as nl:
        idx = nl.index(ifname)
        try:
            nl.ipr.tc("add", "clsact", idx)
        except NetlinkError as e:
            if e.code != 17:        # EEXIST: clsact already there
                raise KernelFeature(f"cannot add clsact on {ifname}: {e}") from None
        try:
            nl.ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name=fn.name, parent=parent,
                      classid=1, direct_action=True)
        except NetlinkError as e:
            raise KernelFeature(f"cannot add tc bpf filter on {ifname}: {e}") from None


def detach_tc(ns: str | None, ifname: str) -> None:
    from pyroute2 import NetlinkError
    if ns is not None and not netns.exists(ns):
        return
    with netlink.Netlink(ns) as nl:
        idx = nl.ipr.link_lookup(ifname=ifname)
        if not idx:
            return
        try:
            nl.ipr.tc("del", "clsact", idx[0])
        except NetlinkError:
            pass


def attach_xdp_pinned(ns: str | None, ifname: str, prog_pin: str) -> str:
    """Attach a pinned program: how a process that did not compile it puts it back. (Not via
    `ip netns exec`/`ip -n`: they remount /sys and the pin is not visible there.)"""
    fd = bpfsys.obj_get(prog_pin)
    try:
        return attach_xdp_fd(ns, ifname, fd)
    finally:
        os.close(fd)


XDP_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", "xdp": "native", "xdpgeneric": "generic",
                      "xdpoffload": "offload", "drv": "native", "skb": "generic"}


def xdp_attachments(ns: str | None) -> dict[str, tuple[int, str]]:
    """Every interface of a netns that has an XDP program: ifname -> (program id, mode)."""
    out = {}
    with netlink.Netlink(ns) as nl:
        for link in nl.ipr.get_links():
            x = link.get_attr("IFLA_XDP")
            if not x:
                continue
            pid = x.get_attr("IFLA_XDP_PROG_ID")
            if not pid:
                continue
            mode = XDP_ATTACHED_MODES.get(x.get_attr("IFLA_XDP_ATTACHED"), "native")
            out[link.get_attr("IFLA_IFNAME")] = (pid, mode)
    return out
