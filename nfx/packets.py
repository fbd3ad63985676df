"""Move packets and flow keys as bytes, for both sides of the wire: a packet the gate handed over
(its buffer-ring header, nfx_buf_hdr, then the frame), packets back to back as the buffer ring
and the agent protocol carry them, and flow keys as a blob."""
import ctypes as ct
from dataclasses import dataclass

from . import layout as L
from .errors import BadInput

HDR = ct.sizeof(L.BufHdr)


@dataclass
class Packet:
    """A packet the gate handed to the agent (or one to hand back)."""
    data: bytes
    side: int
    key: bytes = b""           # raw nfx_flow_key
    kind: int = L.BufKind.PACKET
    rx: int = 0
    epoch: int = 0
    ts_ns: int = 0


def decode(raw: bytes) -> Packet | None:
    """One buffer-ring record (None if too short to hold a header)."""
    if len(raw) < HDR:
        return None
    h = L.BufHdr.from_buffer_copy(raw[:HDR])
    return Packet(raw[HDR:HDR + h.len], h.side, bytes(h.key), h.kind, h.rx, h.epoch, h.ts_ns)


def pack(packets: list[Packet]) -> bytes:
    """Packets as the buffer ring holds them (header, bytes), back to back."""
    out = bytearray()
    for p in packets:
        h = L.BufHdr(ts_ns=p.ts_ns, len=len(p.data), epoch=p.epoch, kind=p.kind, side=p.side, rx=p.rx)
        if p.key:
            ct.memmove(ct.addressof(h.key), p.key, ct.sizeof(L.FlowKey))
        out += bytes(h) + p.data
    return bytes(out)


def unpack(blob: bytes) -> list[Packet]:
    out, i = [], 0
    while i < len(blob):
        if len(blob) - i < HDR:
            raise BadInput("truncated packet record")
        h = L.BufHdr.from_buffer_copy(blob[i:i + HDR])
        if h.len > L.MAX_PKT or i + HDR + h.len > len(blob):
            raise BadInput("packet record longer than its blob")
        out.append(Packet(bytes(blob[i + HDR:i + HDR + h.len]), h.side, bytes(h.key), h.kind, h.rx, h.epoch, h.ts_ns))
        i += HDR + h.len
    return out


def keys_blob(keys: list) -> bytes:
    return b"".join(bytes(k) for k in keys)


def keys_from_blob(blob: bytes) -> list:
    n = ct.sizeof(L.FlowKey)
    if len(blob) % n:
        raise BadInput("flow keys blob is not a whole number of keys")
    return list((L.FlowKey * (len(blob) // n)).from_buffer_copy(blob)) if blob else []


def flow_key_array(chunks):
    """The keys of the per-flow chunks among `chunks` as one FlowKey array, none decoded alone
    (an early release takes a put's keys on the hold's path)."""
    blob = b"".join(bytes(c.keys) for c in chunks if c.scope == "per-flow")
    return (L.FlowKey * (len(blob) // ct.sizeof(L.FlowKey))).from_buffer_copy(blob)


def flow_keys(chunks) -> tuple[list, list]:
    """The flow keys of the per-flow chunks among `chunks`, and those on the outside (a NAT's
    public tuples, the keys of nat_rev)."""
    flows, outside = [], []
    for c in chunks:
        if c.scope == "per-flow":
            ks = keys_from_blob(bytes(c.keys))
            flows += ks
            if c.table == "nat_rev":
                outside += ks
    return flows, outside
