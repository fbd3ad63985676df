"""The one framing nfx uses on the management network and in state files.

    frame  = header payload
    header = magic "NFXW" | version u16 | kind u16 | reserved u32 | payload length u64   (little-endian)
    kind   = 1 JSON (utf-8 object) | 2 CHUNK | 3 END (JSON) | 4 ERROR (JSON {"error": ...})
             | 5 STATELETS (u32 count, u32 record lengths, then statelet ring records: SLiM's stream)
    CHUNK  = u32 header length | JSON chunk header | keys (count × key_size) | values (count × value_size)

A chunk header names its table, scope, NF kind, entry count, key and value sizes, CPU count for
per-CPU values, and the layout hash of the NF kind's headers it was written with: a reader
refuses chunks of another layout. Keys and values travel as the kernel's raw bytes (what batch ops read and write)."""
import json
import struct
from dataclasses import dataclass

from ..errors import BadInput

MAGIC = b"NFXW"
VERSION = 1
HDR = struct.Struct("<4sHHIQ")
JSON, CHUNK, END, ERROR, STATELETS = 1, 2, 3, 4, 5
KIND_NAMES = {JSON: "JSON", CHUNK: "CHUNK", END: "END", ERROR: "ERROR", STATELETS: "STATELETS"}
MAX_JSON = 16 << 20
MAX_PAYLOAD = 1 << 34
GROW_FROM = 16 << 20          # Reader: a payload's buffer starts this large at most


class WireError(BadInput):
    pass


@dataclass
class Chunk:
    table: str
    scope: str
    kind: str
    count: int
    key_size: int
    value_size: int
    ncpu: int
    layout: str
    keys: memoryview | bytes
    values: memoryview | bytes
    seq: int = 0

    def header(self) -> dict:
        return {"table": self.table, "scope": self.scope, "kind": self.kind, "count": self.count,
                "key_size": self.key_size, "value_size": self.value_size, "ncpu": self.ncpu,
                "layout": self.layout, "seq": self.seq}

    @property
    def nbytes(self) -> int:
        return len(self.keys) + len(self.values)


def encode_json(obj, kind: int = JSON) -> list[bytes]:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return [HDR.pack(MAGIC, VERSION, kind, 0, len(body)), body]


def encode_chunk(c: Chunk) -> list:
    h = json.dumps(c.header(), separators=(",", ":")).encode()
    n = 4 + len(h) + len(c.keys) + len(c.values)
    return [HDR.pack(MAGIC, VERSION, CHUNK, 0, n), struct.pack("<I", len(h)), h, c.keys, c.values]


def encode_statelets(records: list) -> list:
    """Statelet ring records (bytes, 8-byte words) as one frame: u32 count, each record's length
    (u32), then the records back to back (a reader parses them all at once: nfx/state/stbatch.py)."""
    lens = struct.pack(f"<I{len(records)}I", len(records), *(len(r) for r in records))
    return [HDR.pack(MAGIC, VERSION, STATELETS, 0, len(lens) + sum(len(r) for r in records)), lens, *records]


def decode_statelets(payload) -> tuple[memoryview, list[int]]:
    """A STATELETS payload as (the records back to back, their lengths)."""
    mv = memoryview(payload)
    if len(mv) < 4:
        raise WireError("truncated statelet frame")
    (n,) = struct.unpack_from("<I", mv, 0)
    if 4 + 4 * n > len(mv):
        raise WireError(f"statelet frame of {len(mv)} bytes cannot hold {n} record lengths")
    lens = list(struct.unpack_from(f"<{n}I", mv, 4))
    body = mv[4 + 4 * n:]
    if sum(lens) != len(body):
        raise WireError(f"statelet frame: lengths add up to {sum(lens)}, {len(body)} bytes follow")
    return body, lens


def decode_header(raw: bytes) -> tuple[int, int]:
    magic, version, kind, _, length = HDR.unpack(raw)
    if magic != MAGIC:
        raise WireError(f"not an nfx frame (magic {magic!r})")
    if version != VERSION:
        raise WireError(f"wire version {version}, this nfx speaks {VERSION}")
    if kind not in (JSON, CHUNK, END, ERROR, STATELETS):
        raise WireError(f"unknown frame kind {kind}")
    if length > (MAX_JSON if kind not in (CHUNK, STATELETS) else MAX_PAYLOAD):
        raise WireError(f"frame of {length} bytes is too large")
    return kind, length


def decode_json(payload) -> dict:
    try:
        obj = json.loads(bytes(payload))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"malformed JSON frame: {e}") from None
    if not isinstance(obj, dict):
        raise WireError("a JSON frame must hold an object")
    return obj


def decode_chunk(payload) -> Chunk:
    mv = memoryview(payload)
    if len(mv) < 4:
        raise WireError("truncated chunk")
    (hl,) = struct.unpack_from("<I", mv, 0)
    if 4 + hl > len(mv):
        raise WireError("truncated chunk header")
    h = decode_json(mv[4:4 + hl])
    try:
        count, ks, vs = int(h["count"]), int(h["key_size"]), int(h["value_size"])
        ncpu = int(h.get("ncpu", 1))
        body = mv[4 + hl:]
        if count < 0 or len(body) != count * (ks + vs * ncpu):
            raise WireError(f"chunk of {h.get('table')}: {len(body)} bytes for {count} entries "
                            f"of {ks}+{vs}x{ncpu} bytes")
        return Chunk(h["table"], h["scope"], h["kind"], count, ks, vs, ncpu, h["layout"],
                     body[:count * ks], body[count * ks:], int(h.get("seq", 0)))
    except (KeyError, ValueError, TypeError) as e:
        raise WireError(f"bad chunk header: {e}") from None


# ---- streams: a file or a socket ------------------------------------------------------------
class Reader:
    """Frames from anything with readinto (a file) or recv_into (a socket)."""

    def __init__(self, src, max_frame: int | None = None):
        """max_frame: refuse (WireError, before allocating) a frame whose header claims more."""
        self._into = getattr(src, "recv_into", None) or src.readinto
        self._sock = hasattr(src, "recv_into")
        self.max_frame = max_frame

    def _exact(self, n: int) -> memoryview:
        # the buffer grows as the bytes come (doubling past GROW_FROM): a damaged header that
        # claims gigabytes fails at the stream's end, not after zeroing gigabytes first
        buf = bytearray(min(n, GROW_FROM))
        got = 0
        while got < n:
            if got == len(buf):
                buf.extend(bytes(min(len(buf), n - got)))
            with memoryview(buf) as mv:
                r = self._into(mv[got:], len(buf) - got) if self._sock else self._into(mv[got:])
            if not r:
                raise WireError(f"stream ended {n - got} bytes short of a frame")
            got += r
        return memoryview(buf)

    def header(self):
        """(kind, payload length) of the next frame; None at a clean EOF. A WireError here means
        the stream is out of step: nothing after it can be trusted."""
        first = self._into(hb := bytearray(HDR.size), HDR.size) if self._sock else self._into(hb := bytearray(HDR.size))
        if not first:
            return None
        if first < HDR.size:
            rest = self._exact(HDR.size - first)
            hb[first:] = rest
        kind, length = decode_header(bytes(hb))
        if self.max_frame is not None and length > self.max_frame:
            raise WireError(f"frame of {length} bytes is over the {self.max_frame}-byte limit")
        return kind, length

    def body(self, kind: int, length: int):
        """The payload after header(), decoded. A WireError here leaves the stream in step."""
        payload = self._exact(length) if length else memoryview(b"")
        if kind == STATELETS:
            return payload
        return decode_chunk(payload) if kind == CHUNK else decode_json(payload)

    def skip(self, length: int) -> None:
        """Discard a payload after header() without holding it in memory."""
        buf = memoryview(bytearray(min(length, 1 << 20) or 1))
        while length:
            n = min(length, len(buf))
            r = self._into(buf[:n], n) if self._sock else self._into(buf[:n])
            if not r:
                raise WireError(f"stream ended {length} bytes short of a frame")
            length -= r

    def frame(self):
        """(kind, decoded payload): dict for JSON/END/ERROR, Chunk for CHUNK, a memoryview for
        STATELETS; None at a clean EOF."""
        h = self.header()
        if h is None:
            return None
        return h[0], self.body(*h)


def write(dst, parts: list) -> int:
    """Write frame parts to a socket (sendmsg, no joining) or a file."""
    if hasattr(dst, "sendmsg"):
        total = sum(len(p) for p in parts)
        sent = 0
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            n = dst.sendmsg(views[:512])
            sent += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]
        return total
    for p in parts:
        dst.write(p)
    return sum(len(p) for p in parts)
