"""The bare XDP forward (bpf/fwd.bpf.c): Ethernet check, the other side's MACs, devmap redirect
out the other side. `nfx bench dataplane` runs it on an NF's two interfaces in place of the NF,
as the floor every XDP NF is measured against. It takes the NF's own port config (the pinned
nfx_port_cfg the testbed wrote: both sides' ifindex, MAC and next hop's MAC), so it sends
packets exactly where the NF would."""
from pathlib import Path

from .. import layout as L
from ..closing import Closing
from ..loader import attach, netns
from ..loader.compile import compile_source, load
from ..loader.maps import stats_dict
from ..loader.spec import MapSet, MapSpec
from ..nfs.base import NF_MAPS


class FWD_MAPS(MapSet):
    """The forward program's maps (bpf/fwd.bpf.c)."""
    fwd_port = MapSpec(L.u32, L.PortCfg)
    fwd_tx = MapSpec(L.u32, L.u32)
    nfx_stats = MapSpec(L.u32, L.u64)


def nf_port_cfg(pin_dir: Path) -> L.PortCfg:
    """A running NF instance's port config, from its pins."""
    m = NF_MAPS.nfx_port_cfg.open_pinned(Path(pin_dir) / "nfx_port_cfg")
    try:
        return m.get(L.u32(0))
    finally:
        m.close()


class XdpForward(Closing):
    """Loaded and configured for `port` (sides 0 and 1) in netns `ns`; attach() puts it on both
    sides' interfaces, close() takes it off again and frees the program."""

    def __init__(self, ns: str | None, port: L.PortCfg):
        self.ns = ns
        self.attached: list[tuple[str, str]] = []       # (ifname, mode)
        self.bpf = compile_source("fwd")
        try:
            self.fn = load(self.bpf, "nfx_fwd", "xdp")
            self.maps = FWD_MAPS.from_bcc(self.bpf)
            self.maps.fwd_port.put(L.u32(0), port)
            with netns.enter(ns):
                # devmap entries resolve the ifindex in the caller's netns
                for side in (0, 1):
                    if port.ifindex[side]:
                        self.maps.fwd_tx.put(L.u32(side), L.u32(port.ifindex[side]))
        except BaseException:
            self.close()
            raise

    def attach(self, ifnames) -> None:
        """On every interface in `ifnames` (an NF's two sides), replacing what was there."""
        try:
            for ifname in ifnames:
                self.attached.append((ifname, attach.attach_xdp(self.ns, ifname, self.fn)))
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        while self.attached:
            ifname, mode = self.attached.pop()
            attach.detach_xdp(self.ns, ifname, mode)

    def stats(self) -> dict[str, int]:
        return stats_dict(self.maps.nfx_stats)

    def close(self) -> None:
        self.detach()
        if getattr(self, "bpf", None) is not None:
            self.bpf.cleanup()
            self.bpf = None
