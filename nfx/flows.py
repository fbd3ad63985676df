"""Flow keys as people write them: addresses, protocols, and the 5-tuple text form."""
import ipaddress
import socket
import struct

from . import layout as L
from .errors import BadInput

PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}


def ip_to_be(addr: str) -> int:
    """Dotted quad → u32 as the kernel stores it (network order read as little-endian int)."""
    try:
        return struct.unpack("<I", socket.inet_aton(str(ipaddress.IPv4Address(addr))))[0]
    except (ipaddress.AddressValueError, ValueError, OSError):
        raise BadInput(f"not an IPv4 address: {addr!r}") from None


def be_to_ip(v: int) -> str:
    return socket.inet_ntoa(struct.pack("<I", v))


def port_to_be(p: int) -> int:
    if not 0 <= p <= 0xFFFF:
        raise BadInput(f"port out of range: {p}")
    return socket.htons(p)


def be_to_port(v: int) -> int:
    return socket.ntohs(v)


def proto_num(p: str | int) -> int:
    if isinstance(p, int):
        return p
    if p.lower() in PROTOS:
        return PROTOS[p.lower()]
    if p.isdigit() and 0 <= int(p) <= 255:
        return int(p)
    raise BadInput(f"unknown protocol {p!r} (tcp, udp, icmp or a number)")


def make_key(saddr: str, daddr: str, sport: int, dport: int, proto: str | int) -> L.FlowKey:
    return L.FlowKey(saddr=ip_to_be(saddr), daddr=ip_to_be(daddr), sport=port_to_be(sport),
                     dport=port_to_be(dport), proto=proto_num(proto))


def key_fields(k: L.FlowKey) -> dict:
    return {"src": be_to_ip(k.saddr), "dst": be_to_ip(k.daddr), "sport": be_to_port(k.sport),
            "dport": be_to_port(k.dport), "proto": PROTO_NAMES.get(k.proto, str(k.proto))}


def key_str(k: L.FlowKey) -> str:
    f = key_fields(k)
    return f"{f['proto']} {f['src']}:{f['sport']} > {f['dst']}:{f['dport']}"


def reverse(k: L.FlowKey) -> L.FlowKey:
    return L.FlowKey(saddr=k.daddr, daddr=k.saddr, sport=k.dport, dport=k.sport, proto=k.proto)
