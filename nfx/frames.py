"""The packets the control side puts into the data plane, built by the controller and by an
agent: DiST's in-band control packet (IBC), which travels with a flow, the trigger that fires
a switch's armed rules (bpf/switch.bpf.c), and SHarP's handover messages."""
import ctypes as ct
import json
import struct

from . import layout as L
from .errors import BadInput


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


# SHarP: the controller's tag on the packets it releases toward the destination (their source
# MAC, which the destination's program rewrites on the way out): the agent keeps them apart
# from what the switch sends straight (ctrl_buff and sw_buff)
CTRL_TAG_MAC = bytes.fromhex("026e66637472")       # 02:"nfctr"


HSL_BODY_MAX = 1500 - 20 - 8 - ct.sizeof(L.HslHdr)   # one frame on a 1500-byte MTU


def hsl_frame(kind: int, epoch: int, side: int, body: bytes, src_mac: bytes,
              dst_mac: bytes = b"\xff" * 6) -> bytes:
    """An HSL message: IPv4/UDP 0.0.0.0 -> 255.255.255.255, ports NFX_HSL_PORT, TOS NFX_TOS_HSL,
    then struct nfx_hsl_hdr (magic in network order, the rest in host order) and `body`.
    Checksums are valid."""
    if kind not in set(L.HslKind):
        raise BadInput(f"unknown HSL message kind {kind!r}: one of {', '.join(k.name for k in L.HslKind)}")
    if not 0 <= epoch < 1 << 32 or not 0 <= side < 256:
        raise BadInput(f"HSL epoch {epoch} or side {side} out of range")
    if len(body) > HSL_BODY_MAX:
        raise BadInput(f"HSL body of {len(body)} bytes: at most {HSL_BODY_MAX} fit one frame")
    magic = struct.unpack("=I", struct.pack("!I", L.HSL_MAGIC))[0]
    hdr = bytes(L.HslHdr(magic=magic, epoch=epoch, kind=kind, side=side, len=len(body)))
    payload = hdr + bytes(body)
    l4 = struct.pack("!HHHH", L.HSL_PORT, L.HSL_PORT, 8 + len(payload), 0) + payload
    return bytes(dst_mac) + bytes(src_mac) + b"\x08\x00" + _ipv4(b"\0" * 4, b"\xff" * 4, 17, L.TOS_HSL, l4, 6)


def parse_hsl(frame: bytes) -> tuple[int, int, int, bytes] | None:
    """(kind, epoch, side, body) of an HSL message (an ethernet frame: TOS NFX_TOS_HSL, UDP,
    NFX_HSL_MAGIC first), or None for any other frame. The body is cut to the header's `len`
    and to what the frame holds (a controller-ring copy stops at 1536 bytes)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        return None
    ihl = (frame[14] & 0xF) * 4
    if frame[15] != L.TOS_HSL or frame[23] != 17 or ihl < 20:
        return None
    at = 14 + ihl + 8
    hsz = ct.sizeof(L.HslHdr)
    if len(frame) < at + hsz:
        return None
    h = L.HslHdr.from_buffer_copy(frame[at:at + hsz])
    if struct.pack("=I", h.magic) != struct.pack("!I", L.HSL_MAGIC):
        return None
    return h.kind, h.epoch, h.side, bytes(frame[at + hsz:at + hsz + h.len])


def hsl_message(kind: int, epoch: int, side: int, body: dict, src_mac: bytes, dst_mac: bytes = b"\xff" * 6) -> bytes:
    """An HSL message whose body is a JSON object (what the controller and the agents say)."""
    return hsl_frame(kind, epoch, side, json.dumps(body, separators=(",", ":")).encode(), src_mac, dst_mac)


def parse_hsl_message(frame: bytes) -> tuple[int, int, int, dict] | None:
    """(kind, epoch, side, body) of an HSL message with a JSON object body, else None."""
    m = parse_hsl(frame)
    if m is None:
        return None
    try:
        body = json.loads(m[3]) if m[3] else {}
    except ValueError:
        return None
    return m[0], m[1], m[2], body if isinstance(body, dict) else {}


def frame_key(frame: bytes) -> L.FlowKey | None:
    """The flow key of an Ethernet/IPv4 frame as the switch keys it (UDP/TCP ports, ICMP echo id;
    fields in network order), None for anything else."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    k = L.FlowKey(saddr=struct.unpack_from("<I", frame, 26)[0], daddr=struct.unpack_from("<I", frame, 30)[0],
                  proto=proto)
    l4 = 14 + ihl
    if proto in (6, 17) and len(frame) >= l4 + 4:
        k.sport, k.dport = struct.unpack_from("<HH", frame, l4)
    elif proto == 1 and len(frame) >= l4 + 8:
        ident = struct.unpack_from("<H", frame, l4 + 4)[0]
        if frame[l4] == 8:
            k.sport = ident
        elif frame[l4] == 0:
            k.dport = ident
    return k


def tagged(frame: bytes) -> bytes:
    """The frame as the controller releases it toward a handover's destination (CTRL_TAG_MAC)."""
    return frame[:6] + CTRL_TAG_MAC + frame[12:]

