"""What every NF instance shares: compile its program, wire its two sides (MACs, tx devmap),
attach it, pin its maps under /sys/fs/bpf/nfx/<testbed>/<instance>/, reopen them from any
process, and read its verdict/reason counters."""
import ctypes as ct
import dataclasses
import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import layout as L
from ..errors import BadInput, BpfError, NotFound
from ..gate import GATE_MAPS, Gate
from ..loader import attach, bpfsys, netns, pin
from ..loader.compile import compile_source, load
from ..loader.maps import stats_dict   # moved to the loader; still importable from here until the cleanup
from ..loader.ring import RingStandIn
from ..loader.spec import MapSpec

log = logging.getLogger("nfx.nfs")


class NF_MAPS(GATE_MAPS):
    """The maps every NF program has (nfx_nf.h, nfx_bpf.h): the gate's and these."""
    nfx_port_cfg = MapSpec(L.u32, L.PortCfg)
    nfx_stats = MapSpec(L.u32, L.u64)
    nfx_tx = MapSpec(L.u32, L.u32)
    # ringbuf: read it with nfx.state.statelets; absent from instances built before statelets
    nfx_statelets = MapSpec(RingStandIn, RingStandIn, optional=True)


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


class NF:
    kind = "base"
    MAPS: type[NF_MAPS] = NF_MAPS       # a subclass declares its own tables on top
    FLOW_BYTES = 0                      # key + value bytes one flow holds in the per-flow tables; 0: unknown

    def __init__(self, instance: str, pin_dir: Path, maps: NF_MAPS, bpf=None, fn=None,
                 wiring: Wiring | None = None):
        self.instance = instance
        self.pin_dir = pin_dir
        self.maps = maps
        self.bpf = bpf          # set only in the process that compiled it
        self.fn = fn
        self.wiring = wiring
        self._runs_bufs = None  # runs()'s lookup buffers, made on its first call

    # ---- lifecycle ----
    @classmethod
    def create(cls, instance: str, wiring: Wiring, pin_dir: Path, config=None, max_flows: int = 262144,
               defines: dict | None = None, program=None) -> "NF":
        """Compile, configure, attach to both sides, pin. On failure nothing stays attached.
        `program`: the (object, function) of a copy already loaded with these defines
        (loader/parallel.py), used instead of compiling and loading here."""
        if program is None:
            b = compile_source(cls.kind, cls.build_defines(max_flows, defines))
            fn = load(b, f"nfx_{cls.kind}", "xdp")
        else:
            b, fn = program
        maps = cls.MAPS.from_bcc(b)
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

    @staticmethod
    def build_defines(max_flows: int, defines: dict | None = None) -> dict:
        return {"NFX_MAX_FLOWS": max_flows, **(defines or {})}

    def _wire(self, w: Wiring) -> None:
        pc = L.PortCfg()
        with netns.enter(w.ns):
            for side, ifname in enumerate(w.ifname):
                idx = netns.ifindex(ifname)
                pc.ifindex[side] = idx
                ct.memmove(pc.mac[side].addr, netns.mac(ifname, w.ns), 6)
                ct.memmove(pc.peer_mac[side].addr, w.peer_mac[side], 6)
                # devmap entries resolve the ifindex in the caller's netns
                self.maps.nfx_tx.put(L.u32(side), L.u32(idx))
            if w.release:
                pc.release_ifindex = netns.ifindex(w.release)
            for slot, ifname in w.peers.items():
                idx = netns.ifindex(ifname)
                pc.peer_ifindex[slot] = idx
                self.maps.nfx_tx.put(L.u32(slot), L.u32(idx))
        self.maps.nfx_port_cfg.put(L.u32(0), pc)

    def add_peer(self, slot: int, ifname: str, ns: str) -> None:
        """A peer link made after the build (nfx nf add): tx slot `slot` sends out `ifname` of
        netns `ns`. The devmap slot first, then the port config's peer_ifindex, which tells the
        gate that a frame arriving there was redirected by a peer."""
        if not 2 <= slot < L.TX_SLOTS:
            raise BadInput(f"tx slot {slot} is no peer's: peers have slots 2..{L.TX_SLOTS - 1}")
        with netns.enter(ns):
            idx = netns.ifindex(ifname)
            self.maps.nfx_tx.put(L.u32(slot), L.u32(idx))    # resolved in the caller's netns
        pc = self.maps.nfx_port_cfg.get(L.u32(0))
        pc.peer_ifindex[slot] = idx
        self.maps.nfx_port_cfg.put(L.u32(0), pc)

    def drop_peer(self, slot: int) -> None:
        """Undo add_peer (nfx nf remove): no frame is taken as a peer's there, nothing is sent
        there. A slot never filled is fine."""
        if not 2 <= slot < L.TX_SLOTS:
            raise BadInput(f"tx slot {slot} is no peer's: peers have slots 2..{L.TX_SLOTS - 1}")
        pc = self.maps.nfx_port_cfg.get(L.u32(0))
        if pc is not None and pc.peer_ifindex[slot]:
            pc.peer_ifindex[slot] = 0
            self.maps.nfx_port_cfg.put(L.u32(0), pc)
        self.maps.nfx_tx.delete(L.u32(slot))

    def configure(self, config) -> None:
        """Subclasses write their config map here."""

    @classmethod
    def open(cls, instance: str, pin_dir: Path) -> "NF":
        """Reopen a running instance's maps from its pins (any process); BpfError names every
        declared map without a pin."""
        if not pin_dir.exists():
            raise NotFound(f"instance {instance!r} is not running (no pins at {pin_dir})")
        return cls(instance, pin_dir, cls.MAPS.open_pinned(pin_dir))

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
        return stats_dict(self.maps.nfx_stats)

    def runs(self) -> list[tuple[int, int]]:
        """Per possible CPU, this instance's program runs (begun, ended): begun counted as a run
        enters (nfx_nf_entry), ended as its verdict at its one exit. Runs on one CPU do not
        overlap, so a CPU whose ended count reaches a begun count read earlier has finished
        every run begun before that read. The verdicts are read before the begun count, so a
        run between the two reads shows as begun, not ended. Two lookups (~50 us a call here,
        idle) into buffers kept for the next call: a settle asks a few times a group."""
        m = self.maps.nfx_stats
        if self._runs_bufs is None:
            self._runs_bufs = ((L.u32 * 8)(*range(8)), (m.Slot * 8)(), m.Slot(), ct.c_uint64(0))
        keys, verdicts, begun, out_b = self._runs_bufs
        n, err = bpfsys.map_batch(bpfsys.MAP_LOOKUP_BATCH, m.fd, ct.addressof(keys), ct.addressof(verdicts),
                                  8, None, out_b)
        err = err or bpfsys.map_elem(bpfsys.MAP_LOOKUP_ELEM, m.fd, L.u32(L.Stat.R_NF_RUN), begun)
        if (err and err != errno.ENOENT) or n < 8:
            raise BpfError(f"reading {self.instance}'s run counts: {os.strerror(err) if err else f'{n} slots'}")
        return [(begun[c], sum(verdicts[v][c] for v in range(8))) for c in range(m.ncpu)]

    def flow_count(self) -> int | None:
        """Live flows (per-flow entries), where the NF can count them without reading every
        entry's state; None where it cannot."""
        return None

    @property
    def gate(self) -> Gate:
        """The instance's gate: its only writer (nfx/gate.py)."""
        return Gate(self)
