"""What the NF node of the dataplane bench's chain runs, one path at a time, on the same veths:
the bare XDP forward, the testbed's own XDP NAT, an IDS instance, or the kernel (nftables
masquerade, or plain forwarding). Switching is an XDP attach that replaces what the two sides
ran (plus the nft table for the kernel paths), so the runs of every path can go round in
turn. close() leaves the node as the testbed built it: its NF on both sides, no nft table, no
addresses, the forward and the IDS gone."""
import logging
from pathlib import Path

from .. import registry
from ..closing import Closing
from ..loader import attach, netns, pin
from ..loader.maps import stats_dict
from ..nfs.base import NF_MAPS, Wiring
from ..nfs.ids import IDS, IdsConfig
from . import kernel_nat
from .xdp_forward import XdpForward, nf_port_cfg

log = logging.getLogger("nfx.bench")

# every path the bench measures, in the order each rep runs them
PATHS = ("xdp_forward", "xdp_nat", "xdp_ids", "nft_masquerade", "kernel_forward")
KERNEL_PATHS = ("nft_masquerade", "kernel_forward")
IDS_PIN = "bench-ids"       # under the testbed's pin root, so `testbed down` takes it whatever happens


class NfPaths(Closing):
    """The paths of node `nf` (a chain testbed's, built with the NAT). Loads the forward and the
    IDS (default config: no signatures) up front; on failure half way, what exists is undone."""

    def __init__(self, rec: registry.Testbed, nf: str = "nf0", max_flows: int = 65536):
        info = rec["nodes"][nf]
        self.rec, self.nf = rec, nf
        self.ns = info["ns"]
        self.sides = tuple(info["wiring"])
        self.nf_prog = str(Path(info["pin"]) / "prog")
        self.current: str | None = "xdp_nat"
        self.router = False         # kernel_nat.router_config done
        self.fwd = self.ids = None
        self.ids_config = IdsConfig()     # as `testbed up --nf ids` builds it
        self.ids_pin = registry.pin_root(rec.name) / IDS_PIN
        try:
            port = nf_port_cfg(info["pin"])           # the sides' ifindex and MACs, as the testbed wired them
            self.fwd = XdpForward(self.ns, port)
            # IDS.create attaches to both sides: it is the path until the first use()
            self.current = None
            self.ids = IDS.create(IDS_PIN, Wiring(self.ns, self.sides, (bytes(port.peer_mac[0].addr),
                                                                        bytes(port.peer_mac[1].addr))),
                                  self.ids_pin, self.ids_config, max_flows=max_flows)
            self.current = "xdp_ids"
        except BaseException:
            self.close()
            raise

    def use(self, path: str) -> None:
        """Make `path` the one packets take through the node."""
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}")
        if path == self.current:
            return
        was, self.current = self.current, None      # unknown until the switch is done
        if not self.router and path in KERNEL_PATHS:
            self.router = True                       # first: close() undoes a config that failed half way
            kernel_nat.router_config(self.rec, self.nf)
        if was in (None, "nft_masquerade"):
            kernel_nat.masquerade(self.rec, False, self.nf)
        if path in KERNEL_PATHS:
            if was not in KERNEL_PATHS:
                kernel_nat.to_kernel_router(self.rec, self.nf)
            if path == "nft_masquerade":
                kernel_nat.masquerade(self.rec, True, self.nf)
        elif path == "xdp_nat":
            for side in self.sides:
                attach.attach_xdp_pinned(self.ns, side, self.nf_prog)
        else:
            fn = self.fwd.fn if path == "xdp_forward" else self.ids.fn
            for side in self.sides:
                attach.attach_xdp(self.ns, side, fn)
        self.current = path

    def redirected(self, path: str) -> int | None:
        """Packets an XDP path's program has redirected so far (None for the kernel's): a run's
        share shows the packets took the path it is labelled with."""
        if path in KERNEL_PATHS:
            return None
        if path == "xdp_nat":
            # the testbed's NAT, from its pinned counters
            m = NF_MAPS.nfx_stats.open_pinned(Path(self.rec["nodes"][self.nf]["pin"]) / "nfx_stats")
            try:
                stats = stats_dict(m)
            finally:
                m.close()
        else:
            stats = (self.fwd if path == "xdp_forward" else self.ids).stats()
        return stats.get("v_redirect", 0)

    def close(self) -> None:
        """Best effort, every step: the node back as built (nothing here may hide the error that
        brought us here; `testbed down` removes whatever a failed step left)."""
        steps = [("the testbed's NF back on both sides", self._nf_back)]
        if self.router:
            steps.append(("the kernel router's config removed", self._router_off))
        steps += [("the forward unloaded", self._fwd_off), ("the IDS unloaded", self._ids_off)]
        for what, step in steps:
            try:
                step()
            except Exception as e:      # noqa: BLE001 -- logged; the testbed's teardown is the backstop
                log.warning("dataplane bench: %s failed: %s", what, e)

    def _nf_back(self) -> None:
        if not netns.exists(self.ns) or self.current == "xdp_nat":
            return
        kernel_nat.masquerade(self.rec, False, self.nf)
        for side in self.sides:
            attach.attach_xdp_pinned(self.ns, side, self.nf_prog)
        self.current = "xdp_nat"

    def _router_off(self) -> None:
        if netns.exists(self.ns):
            kernel_nat.undo_router_config(self.rec, self.nf)
        self.router = False

    def _fwd_off(self) -> None:
        if self.fwd is not None:
            self.fwd.close()
            self.fwd = None

    def _ids_off(self) -> None:
        if self.ids is not None and self.ids.bpf is not None:
            self.ids.bpf.cleanup()
        self.ids = None
        pin.unpin(self.ids_pin)
