"""The switch's rules as Python values (Rule, Match, RuleInfo) and the conversions between them
and the wire-order fields of bpf/include/nfx_switch.h; the switch itself is switch.py."""
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from .. import layout as L
from ..errors import BadInput
from .spread import Spread
from .switch_ring import Port

PROTOS = {"icmp": socket.IPPROTO_ICMP, "tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


@dataclass
class Rule:
    output: list[Port] = field(default_factory=list)   # 1 port: output; more: duplicate
    set_tos: int | None = None
    clear_tos: bool = False
    to_ctrl: bool = False
    drop: bool = False
    token: int = 0               # nonzero: armed, in force once a trigger with it arrived
    tagged: bool = False         # dup: output[i]'s copy gets source MAC layout.dup_tag(i)
    spread: list[Port] = field(default_factory=list)   # the packet goes to one of these, per flow
    spread_by: Spread = Spread()                        # how the port is chosen


@dataclass
class Match:
    """A wildcard: None/0 fields match anything."""
    in_port: Port | None = None
    src: str | None = None       # "10.0.1.0/24" or an address
    dst: str | None = None
    sport: int = 0
    dport: int = 0
    proto: int | str = 0


@dataclass
class RuleInfo:
    id: int
    kind: str                    # "exact" or "wild"
    rule: Rule
    match: Match | tuple | None  # Match for wildcards, (src, dst, sport, dport, proto) for exact
    prio: int | None = None


# ---- conversions between Python values and the wire-order fields in nfx_switch.h ----
def _addr(a: str) -> int:
    return struct.unpack("=I", ipaddress.IPv4Address(a).packed)[0]


def _addr_str(v: int) -> str:
    return str(ipaddress.IPv4Address(struct.pack("=I", v)))


def _prefix(p: str | None) -> tuple[int, int]:
    if not p:
        return 0, 0
    try:
        net = ipaddress.IPv4Network(p, strict=False)
    except ValueError as e:
        raise BadInput(f"bad prefix {p!r}: {e}") from None
    return _addr(str(net.network_address)), _addr(str(net.netmask))


def _prefix_str(addr: int, mask: int) -> str | None:
    if not mask:
        return None
    plen = bin(struct.unpack("!I", struct.pack("=I", mask))[0]).count("1")
    return f"{_addr_str(addr)}/{plen}"


def _proto(p: int | str) -> int:
    if isinstance(p, str):
        if p.lower() not in PROTOS:
            raise BadInput(f"unknown protocol {p!r} (use {', '.join(PROTOS)} or a number)")
        return PROTOS[p.lower()]
    return int(p)


def flow_key(src: str, dst: str, sport: int, dport: int, proto: int | str) -> L.FlowKey:
    """A FlowKey from host-order values (ICMP echo: request sport=id dport=0, reply sport=0 dport=id)."""
    return L.FlowKey(saddr=_addr(src), daddr=_addr(dst), sport=socket.htons(sport),
                     dport=socket.htons(dport), proto=_proto(proto))


def _key_tuple(k: L.FlowKey) -> tuple:
    return (_addr_str(k.saddr), _addr_str(k.daddr), socket.ntohs(k.sport), socket.ntohs(k.dport), k.proto)
