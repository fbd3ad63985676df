"""Attach and detach XDP programs and tc clsact filters inside a named netns."""
import logging

from ..errors import KernelFeature, NfxError
from . import netns

log = logging.getLogger("nfx.loader")

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2


def attach_xdp(ns: str | None, ifname: str, fn, allow_generic: bool = True) -> str:
    """Native mode first; generic only if native fails (with a warning). Returns the mode."""
    import bcc
    with netns.enter(ns):
        try:
            bcc.BPF.attach_xdp(ifname.encode(), fn, XDP_FLAGS_DRV_MODE)
            return "native"
        except Exception as e:
            if not allow_generic:
                raise KernelFeature(f"native XDP on {ifname} failed: {e}") from None
            log.warning("native XDP on %s failed (%s); using generic mode (about 2.5x slower)", ifname, e)
        try:
            bcc.BPF.attach_xdp(ifname.encode(), fn, XDP_FLAGS_SKB_MODE)
            return "generic"
        except Exception as e:
            raise KernelFeature(f"cannot attach XDP to {ifname} in {ns}: {e}") from None


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
    from pyroute2 import IPRoute, NetlinkError
    parent = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}[direction]
    with IPRoute(netns=ns) if ns else IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise NfxError(f"no interface {ifname} in {ns}")
        try:
            ipr.tc("add", "clsact", idx[0])
        except NetlinkError as e:
            if e.code != 17:        # EEXIST: clsact already there
                raise KernelFeature(f"cannot add clsact on {ifname}: {e}") from None
        try:
            ipr.tc("add-filter", "bpf", idx[0], ":1", fd=fn.fd, name=fn.name, parent=parent,
                   classid=1, direct_action=True)
        except NetlinkError as e:
            raise KernelFeature(f"cannot add tc bpf filter on {ifname}: {e}") from None


def detach_tc(ns: str | None, ifname: str) -> None:
    from pyroute2 import IPRoute, NetlinkError
    if ns is not None and not netns.exists(ns):
        return
    with IPRoute(netns=ns) if ns else IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return
        try:
            ipr.tc("del", "clsact", idx[0])
        except NetlinkError:
            pass
