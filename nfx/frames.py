"""The packets the control side puts into the data plane, built by the controller and by an
agent: DiST's in-band control packet (IBC), which travels with a flow, and the trigger that fires
a switch's armed rules (bpf/switch.bpf.c)."""
import struct

from . import layout as L


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF


def _ipv4(sa: bytes, da: bytes, proto: int, tos: int, l4: bytes, ck_at: int) -> bytes:
    """IPv4 header + l4, with the L4 checksum (at offset ck_at in l4) and the header's filled in."""
    ck = _csum(sa + da + struct.pack("!BBH", 0, proto, len(l4)) + l4) or 0xFFFF
    l4 = l4[:ck_at] + struct.pack("!H", ck) + l4[ck_at + 2:]
    ip = struct.pack("!BBHHHBBH", 0x45, tos, 20 + len(l4), 0, 0x4000, 64, proto, 0) + sa + da
    return ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:] + l4


def ibc_frame(key: L.FlowKey, src_mac: bytes, epoch: int) -> bytes:
    """A packet of the flow (its 5-tuple, so every rule and mark treats it as the flow), told
    apart by TOS NFX_TOS_IBC and a payload starting with NFX_IBC_MAGIC. Checksums are valid."""
    payload = struct.pack("!II", L.IBC_MAGIC, epoch)
    sp, dp = struct.pack("<H", key.sport), struct.pack("<H", key.dport)     # already network order
    if key.proto == 6:
        l4, ck_at = sp + dp + struct.pack("!IIBBHHH", 0, 0, 5 << 4, 0x10, 65535, 0, 0) + payload, 16
    else:
        l4, ck_at = sp + dp + struct.pack("!HH", 8 + len(payload), 0) + payload, 6
    ip = _ipv4(struct.pack("<I", key.saddr), struct.pack("<I", key.daddr), key.proto, L.TOS_IBC, l4, ck_at)
    return bytes.fromhex("020000000001") + src_mac + b"\x08\x00" + ip


TRIGGER_PORT = 4791        # UDP port of a trigger, both ends (any would do: TOS and magic decide)


def trigger_frame(token: int, src_mac: bytes) -> bytes:
    """A trigger for the switch on the other end of the link it is sent on: TOS NFX_TOS_FIRE,
    UDP, then struct nfx_fire_payload (magic in network order, the token as 8 raw bytes)."""
    payload = struct.pack("!II", L.FIRE_MAGIC, 0) + bytes(L.u64(token))
    l4 = struct.pack("!HHHH", TRIGGER_PORT, TRIGGER_PORT, 8 + len(payload), 0) + payload
    return b"\xff" * 6 + src_mac + b"\x08\x00" + _ipv4(b"\0" * 4, b"\0" * 4, 17, L.TOS_FIRE, l4, 6)
