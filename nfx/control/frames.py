"""The packets the control plane puts into the data plane: DiST's in-band control packet (IBC),
which travels with a flow, and the trigger that fires a switch's armed rules (bpf/switch.bpf.c)."""
import struct

from .. import layout as L


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF


def ibc_frame(key: L.FlowKey, src_mac: bytes, epoch: int) -> bytes:
    """A packet of the flow (its 5-tuple, so every rule and mark treats it as the flow), told
    apart by TOS NFX_TOS_IBC and a payload starting with NFX_IBC_MAGIC. Checksums are valid."""
    payload = struct.pack("!II", L.IBC_MAGIC, epoch)
    sa, da = struct.pack("<I", key.saddr), struct.pack("<I", key.daddr)
    sp, dp = struct.pack("<H", key.sport), struct.pack("<H", key.dport)     # already network order
    if key.proto == 6:
        l4 = sp + dp + struct.pack("!IIBBHHH", 0, 0, 5 << 4, 0x10, 65535, 0, 0) + payload
        ck_at = 16
    else:
        l4 = sp + dp + struct.pack("!HH", 8 + len(payload), 0) + payload
        ck_at = 6
    pseudo = sa + da + struct.pack("!BBH", 0, key.proto, len(l4))
    ck = _csum(pseudo + l4) or 0xFFFF
    l4 = l4[:ck_at] + struct.pack("!H", ck) + l4[ck_at + 2:]
    ip = struct.pack("!BBHHHBBH", 0x45, L.TOS_IBC, 20 + len(l4), 0, 0x4000, 64, key.proto, 0) + sa + da
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return bytes.fromhex("020000000001") + src_mac + b"\x08\x00" + ip + l4


def _udp_ip(sa: bytes, da: bytes, sport: int, dport: int, tos: int, payload: bytes) -> bytes:
    l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ck = _csum(sa + da + struct.pack("!BBH", 0, 17, len(l4)) + l4) or 0xFFFF
    l4 = l4[:6] + struct.pack("!H", ck) + l4[8:]
    ip = struct.pack("!BBHHHBBH", 0x45, tos, 20 + len(l4), 0, 0x4000, 64, 17, 0) + sa + da
    return ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:] + l4


TRIGGER_PORT = 4791        # UDP port of a trigger, both ends (any would do: TOS and magic decide)


def trigger_frame(token: int, src_mac: bytes) -> bytes:
    """A trigger for the switch on the other end of the link it is sent on: TOS NFX_TOS_FIRE,
    UDP, then struct nfx_fire_payload (magic in network order, the token as 8 raw bytes)."""
    payload = struct.pack("!II", L.FIRE_MAGIC, 0) + bytes(L.u64(token))
    zero = b"\0\0\0\0"
    return b"\xff" * 6 + src_mac + b"\x08\x00" + _udp_ip(zero, zero, TRIGGER_PORT, TRIGGER_PORT, L.TOS_FIRE, payload)
