"""Spread rules (bpf/switch.bpf.c, NFX_SW_SPREAD): a rule that sends each flow to one port of a
group, chosen per flow. "hash": by a hash of the 5-tuple that both directions of a flow share,
so an IDS's return traffic reaches the instance that saw the flow go out. "slice": by the
destination port's slice of a NAT's public port range, the way nfx/testbed/builder.py
instance_config cuts it (instance i of n owns lo + i*span//n .. lo + (i+1)*span//n - 1), so a
NAT's return traffic reaches the instance that made the mapping; a port outside the range is
hashed. The same index at both switches is the same instance when both list the instances in the
same order. `spread_index` is the switch's choice worked out in Python (the tests check it against
the kernel's), so a controller can tell which instance a flow went to."""
import socket
from dataclasses import dataclass

from .. import layout as L
from ..errors import BadInput

MODES = {"hash": L.SW_SPREAD_HASH, "slice": L.SW_SPREAD_SLICE}
M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Spread:
    """How a spread rule chooses; its ports are the rule's."""
    mode: str = "hash"
    port_lo: int = 0             # slice: the NAT's public port range, inclusive, host order
    port_hi: int = 0

    def check(self, nports: int) -> None:
        if self.mode not in MODES:
            raise BadInput(f"unknown spread mode {self.mode!r}: one of {', '.join(MODES)}")
        if not 1 <= nports <= L.SW_SPREAD_PORTS:
            raise BadInput(f"a spread rule chooses among 1..{L.SW_SPREAD_PORTS} ports, not {nports}")
        if self.mode == "slice" and not 1 <= self.port_lo <= self.port_hi <= 65535:
            raise BadInput(f"a slice spread needs a port range lo-hi within 1-65535, not {self.port_lo}-{self.port_hi}")


def encode(spread: Spread, ifindexes: list[int]) -> L.SwSpread:
    spread.check(len(ifindexes))
    g = L.SwSpread(mode=MODES[spread.mode], nports=len(ifindexes))
    for i, idx in enumerate(ifindexes):
        g.ports[i] = idx
    if spread.mode == "slice":
        g.lo, g.span = spread.port_lo, spread.port_hi - spread.port_lo + 1
    return g


def decode(g: L.SwSpread) -> tuple[Spread, list[int]]:
    mode = {v: k for k, v in MODES.items()}.get(g.mode, str(g.mode))
    n = min(g.nports, L.SW_SPREAD_PORTS)
    sp = Spread(mode, g.lo, g.lo + g.span - 1) if mode == "slice" else Spread(mode)
    return sp, [g.ports[i] for i in range(n)]


def write_group(maps, rid: int, g: L.SwSpread) -> None:
    """A spread rule's group, written before the rule that reads it; its hit counts zeroed."""
    hm = maps.sw_spread_hits
    for i in range(L.SW_SPREAD_PORTS):
        hm.put(L.u32(rid * L.SW_SPREAD_PORTS + i), hm.Slot())
    maps.sw_spread.put(L.u32(rid), g)


def group_hits(maps, rid: int) -> list[int]:
    """Packets rule `rid` sent to each port of its group, summed over CPUs."""
    g = maps.sw_spread.get(L.u32(rid))
    n = min(g.nports, L.SW_SPREAD_PORTS) if g is not None else 0
    return [maps.sw_spread_hits.sum_percpu(L.u32(rid * L.SW_SPREAD_PORTS + i)) for i in range(n)]


def spread_hash(k: L.FlowKey) -> int:
    """sw_spread_hash: over the key's fields as stored (network order), each pair in order."""
    a, b = sorted((k.saddr, k.daddr))
    p, q = sorted((k.sport, k.dport))
    h = (a * 0x9E3779B1) & M32
    h = ((h ^ b) * 0x85EBCA6B) & M32
    h = ((h ^ (p << 16 | q)) * 0xC2B2AE35) & M32
    h ^= k.proto
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def slice_index(port: int, lo: int, hi: int, n: int) -> int | None:
    """The instance of n whose share of lo..hi holds `port` (None: outside the range)."""
    span = hi - lo + 1
    o = port - lo
    return ((o + 1) * n - 1) // span if 0 <= o < span else None


def spread_index(spread: Spread, n: int, k: L.FlowKey) -> int:
    """The index among n ports the switch picks for a packet whose key is k."""
    if spread.mode == "slice":
        i = slice_index(socket.ntohs(k.dport), spread.port_lo, spread.port_hi, n)
        if i is not None:
            return i
    return (spread_hash(k) * n) >> 32
