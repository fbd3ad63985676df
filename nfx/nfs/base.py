"""What every NF instance shares: compile its program, wire its two sides (MACs, tx devmap),
attach it, pin its maps under /sys/fs/bpf/nfx/<testbed>/<instance>/, reopen them from any
process, and read its verdict/reason counters."""
import ctypes as ct
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .. import layout as L
from ..errors import BadInput, NotFound
from ..loader import attach, netns, pin
from ..loader.compile import compile_source, load
from ..loader.maps import Map
from ..loader.ring import RingStandIn

log = logging.getLogger("nfx.nfs")

# maps every NF program has (from nfx_nf.h / nfx_bpf.h)
COMMON_MAPS = {
    "nfx_marks": (L.FlowKey, L.Mark),
    "nfx_filters": (L.u32, L.Filter),
    "nfx_gate_cfg": (L.u32, L.GateCfg),
    "nfx_move_cfg": (L.u32, L.MoveCfg),
    "nfx_move_state": (L.u32, L.MoveState),
    "nfx_release": (L.u32, L.ReleaseSlot),
    "nfx_drain": (L.FlowKey, L.u32),
    "nfx_port_cfg": (L.u32, L.PortCfg),
    "nfx_stats": (L.u32, L.u64),
    "nfx_tx": (L.u32, L.u32),
    "nfx_statelets": (RingStandIn, RingStandIn),   # ringbuf: read it with nfx.state.statelets
}


@dataclass
class Wiring:
    """Where an instance sits: its netns, its interface on each side, the next hops' MACs, and
    for moves its release veth and its peer links to other instances (tx slot -> interface)."""
    ns: str
    ifname: tuple[str, str]           # (inside side, outside side)
    peer_mac: tuple[bytes, bytes]
    release: str | None = None
    peers: dict = field(default_factory=dict)

    def all_ifnames(self) -> list[str]:
        return list(self.ifname) + ([self.release] if self.release else []) + list(self.peers.values())


def apply_settings(config, pairs: list[str]):
    """Set fields of an NF config dataclass from "name=value" strings (the CLI's --nf-set), typed
    by the field's default: bool (true/false/1/0), int or float. Returns the config."""
    import dataclasses
    fields = {f.name: f for f in dataclasses.fields(config)}
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            simple = sorted(n for n, v in vars(config).items() if isinstance(v, (bool, int, float)))
            raise BadInput(f"bad NF setting {pair!r}", hint=f"name=value with name one of: {', '.join(simple)}")
        cur = getattr(config, name)
        text = text.strip()
        try:
            if isinstance(cur, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                val = text.lower() in ("true", "1", "yes")
            elif isinstance(cur, (int, float)):
                val = type(cur)(text)
            else:
                raise BadInput(f"NF setting {name!r} cannot be set from the command line")
        except ValueError:
            raise BadInput(f"bad value {text!r} for NF setting {name!r} ({type(cur).__name__})") from None
        setattr(config, name, val)
    return config


def stats_dict(m: Map) -> dict[str, int]:
    """Per-CPU counters summed, by name; zero counters left out."""
    n, keys, vals = m.export()
    out = {}
    names = {s.value: s.name.lower() for s in L.Stat}
    for i in range(n):
        total = sum(vals[i])
        if total:
            out[names.get(keys[i], f"stat_{keys[i]}")] = total
    return out


class NF:
    kind = "base"
    MAPS: dict = {}

    def __init__(self, instance: str, pin_dir: Path, maps: dict[str, Map], bpf=None, fn=None,
                 wiring: Wiring | None = None):
        self.instance = instance
        self.pin_dir = pin_dir
        self.maps = maps
        self.bpf = bpf          # set only in the process that compiled it
        self.fn = fn
        self.wiring = wiring

    @classmethod
    def all_maps(cls) -> dict:
        return {**COMMON_MAPS, **cls.MAPS}

    # ---- lifecycle ----
    @classmethod
    def create(cls, instance: str, wiring: Wiring, pin_dir: Path, config=None, max_flows: int = 262144,
               defines: dict | None = None) -> "NF":
        """Compile, configure, attach to both sides, pin. On failure nothing stays attached."""
        b = compile_source(cls.kind, {"NFX_MAX_FLOWS": max_flows, **(defines or {})})
        fn = load(b, f"nfx_{cls.kind}", "xdp")
        maps = {name: Map(b[name.encode()].map_fd, k, v, name=name) for name, (k, v) in cls.all_maps().items()}
        self = cls(instance, pin_dir, maps, bpf=b, fn=fn, wiring=wiring)
        attached = []
        try:
            self._wire(wiring)
            self.configure(config)
            for ifname in wiring.all_ifnames():
                mode = attach.attach_xdp(wiring.ns, ifname, fn)
                attached.append((ifname, mode))
            pin.pin_maps(b, pin_dir)
            pin.pin_prog(fn.fd, pin_dir / "prog")
        except BaseException:
            for ifname, mode in attached:
                attach.detach_xdp(wiring.ns, ifname, mode)
            pin.unpin(pin_dir)
            raise
        return self

    def _wire(self, w: Wiring) -> None:
        pc = L.PortCfg()
        with netns.enter(w.ns):
            for side, ifname in enumerate(w.ifname):
                idx = netns.ifindex(ifname)
                pc.ifindex[side] = idx
                ct.memmove(pc.mac[side].addr, netns.mac(ifname, w.ns), 6)
                ct.memmove(pc.peer_mac[side].addr, w.peer_mac[side], 6)
                # devmap entries resolve the ifindex in the caller's netns
                self.maps["nfx_tx"].put(L.u32(side), L.u32(idx))
            if w.release:
                pc.release_ifindex = netns.ifindex(w.release)
            for slot, ifname in w.peers.items():
                idx = netns.ifindex(ifname)
                pc.peer_ifindex[slot] = idx
                self.maps["nfx_tx"].put(L.u32(slot), L.u32(idx))
        self.maps["nfx_port_cfg"].put(L.u32(0), pc)

    def configure(self, config) -> None:
        """Subclasses write their config map here."""

    @classmethod
    def open(cls, instance: str, pin_dir: Path) -> "NF":
        """Reopen a running instance's maps from its pins (any process)."""
        if not pin_dir.exists():
            raise NotFound(f"instance {instance!r} is not running (no pins at {pin_dir})")
        maps = {}
        for name, (k, v) in cls.all_maps().items():
            path = pin_dir / name
            if path.exists():
                maps[name] = cls._open_pinned(name, path, k, v)
        return cls(instance, pin_dir, maps)

    # value layouts a hot-upgraded build may use for a table instead of MAPS' (nfx/nfs/upgrade.py)
    ALT_VALUES: dict = {}

    @classmethod
    def _open_pinned(cls, name: str, path: Path, k, v) -> Map:
        alts = cls.ALT_VALUES.get(name)
        if alts:
            from ..loader import bpfsys
            size = bpfsys.map_info_path(str(path)).value_size
            v = next((a for a in (v, *alts) if ct.sizeof(a) == size), v)
        return Map.pinned(str(path), k, v)

    @staticmethod
    def destroy(wiring: Wiring, pin_dir: Path) -> None:
        for ifname in wiring.all_ifnames():
            attach.detach_xdp(wiring.ns, ifname)
        pin.unpin(pin_dir)

    # ---- reading ----
    def state_changed(self) -> None:
        """Settle what the datapath derives from tables that state transfer just changed
        (called by the agent, shortly after a put or a delete); nothing for most NFs."""

    def stats(self) -> dict[str, int]:
        return stats_dict(self.maps["nfx_stats"])

    def _gate_cfg(self) -> L.GateCfg:
        return self.maps["nfx_gate_cfg"].get(L.u32(0)) or L.GateCfg()

    def set_filter(self, slot: int, f: L.Filter) -> None:
        self.maps["nfx_filters"].put(L.u32(slot), f)
        g = self._gate_cfg()
        if f.flags & L.FILTER_USED and g.filters <= slot:
            g.filters = slot + 1
            self.maps["nfx_gate_cfg"].put(L.u32(0), g)

    def set_mark(self, key: L.FlowKey, action: L.Action, peer: int = 0) -> None:
        g = self._gate_cfg()
        if not g.marks:
            # raise the flag before the mark exists, so no packet skips a mark it should see
            g.marks = 1
            self.maps["nfx_gate_cfg"].put(L.u32(0), g)
        m = L.Mark(action=int(action), peer=peer)
        self.maps["nfx_marks"].put(key, m)

    def clear_mark(self, key: L.FlowKey) -> None:
        self.maps["nfx_marks"].delete(key)
