"""The agent-side half of the gate: per-flow marks in batches, the instance's move settings,
the buffer ring (packets the gate held back or sent toward the controller), and the release
path that replays packets through the instance's own attached program in one live test run
per batch, so they are processed exactly as if they had just arrived, in order."""
import ctypes as ct
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import layout as L
from ..errors import BadInput, BpfError
from ..loader import bpfsys, netns
from ..loader.ring import RingReader

log = logging.getLogger("nfx.move")
HDR = ct.sizeof(L.BufHdr)
RELEASE_TRIES = 5
FRAME0 = bytes(60)     # the release path grows or shrinks this to each packet


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
    if len(raw) < HDR:
        return None
    h = L.BufHdr.from_buffer_copy(raw[:HDR])
    return Packet(raw[HDR:HDR + h.len], h.side, bytes(h.key), h.kind, h.rx, h.epoch, h.ts_ns)


_RINGS: dict[tuple[str, int], RingReader] = {}
_RINGS_LOCK = threading.Lock()


def packet_ring(nf) -> RingReader:
    """Reader of the instance's buffer ring, opened from its pin once per process and kept:
    mapping a 64 MiB ring costs ~26 ms, too much to pay at the start of every move. Keyed by
    the ring's map id, so a hot upgrade that replaces the ring gets a new reader."""
    fd = bpfsys.obj_get(str(nf.pin_dir / "nfx_pktbuf"))
    try:
        key = (str(nf.pin_dir), bpfsys.map_info(fd).id)
        with _RINGS_LOCK:
            r = _RINGS.get(key)
            if r is None or r.closed:
                r = _RINGS[key] = RingReader(fd, decode)
            return r
    finally:
        os.close(fd)


# ---- marks and move settings ----------------------------------------------------------------
def set_marks(nf, keys: list, action: L.Action, epoch: int = 0, peer: int = 0) -> int:
    """Mark many flows at once (batch update); returns how many."""
    if not keys:
        return 0
    g = nf.maps["nfx_gate_cfg"].get(L.u32(0)) or L.GateCfg()
    if not g.marks:
        g.marks = 1          # before any mark exists, so no packet skips one
        nf.maps["nfx_gate_cfg"].put(L.u32(0), g)
    n = len(keys)
    ka = (L.FlowKey * n).from_buffer_copy(b"".join(bytes(k) for k in keys))
    one = L.Mark(action=int(action), epoch=epoch, peer=peer)
    va = (L.Mark * n).from_buffer_copy(bytes(one) * n)
    return nf.maps["nfx_marks"].update_batch(ka, va, n)


def clear_marks(nf, keys: list | None = None) -> int:
    m = nf.maps["nfx_marks"]
    if keys is None:
        return m.clear()
    return m.delete_batch((L.FlowKey * len(keys))(*keys), len(keys)) if keys else 0


def marks(nf) -> dict[bytes, L.Mark]:
    n, ks, vs = nf.maps["nfx_marks"].export()
    return {bytes(ks[i]): vs[i] for i in range(n)}


def move_cfg(nf) -> L.MoveCfg:
    return nf.maps["nfx_move_cfg"].get(L.u32(0)) or L.MoveCfg()


_CFG_LOCK = threading.Lock()


def set_move_cfg(nf, **fields) -> L.MoveCfg:
    """Only the agent writes nfx_move_cfg (the program only reads it); the lock keeps the
    read-modify-write of two agent threads from losing a field."""
    with _CFG_LOCK:
        c = move_cfg(nf)
        for k, v in fields.items():
            if not hasattr(c, k):
                raise BadInput(f"no move setting {k!r}")
            setattr(c, k, v)
        nf.maps["nfx_move_cfg"].put(L.u32(0), c)
        return c


def move_state(nf) -> L.MoveState:
    return nf.maps["nfx_move_state"].get(L.u32(0)) or L.MoveState()


def reset_move(nf) -> None:
    """Between moves: no epoch, no IBCs seen (the release cursor keeps counting)."""
    st = move_state(nf)
    cur = st.release_cursor
    nf.maps["nfx_move_state"].put(L.u32(0), L.MoveState(release_cursor=cur))
    nf.maps["nfx_move_cfg"].put(L.u32(0), L.MoveCfg(flushed_seq=move_cfg(nf).flushed_seq))


def set_filter(nf, slot: int, flt_text: str | None, action: L.Action, epoch: int = 0, peer: int = 0) -> None:
    """A wildcard gate filter for flows with no mark (those born during a move), both directions."""
    from ..state.filter import parse
    f = parse(flt_text)
    lf = L.Filter(saddr=f.src[0], smask=f.src[1], daddr=f.dst[0], dmask=f.dst[1], proto=f.proto,
                  action=int(action), flags=L.FILTER_USED | L.FILTER_BIDIR, peer=peer, tag=epoch)
    for name, (lo, hi) in (("sport", f.sport), ("dport", f.dport)):
        if (lo, hi) != (0, 65535):
            if lo != hi:
                raise BadInput("gate filters take single ports, not ranges")
            setattr(lf, name, __import__("socket").htons(lo))
    nf.set_filter(slot, lf)


def clear_filter(nf, slot: int) -> None:
    nf.maps["nfx_filters"].put(L.u32(slot), L.Filter())


# ---- release --------------------------------------------------------------------------------
class Releaser:
    """Hands packets back to the instance's program through its release veth. Each call replays
    up to NFX_RELEASE_SLOTS packets in order in one live test run; when it returns, they have
    all left the program, and flushed_seq says so to the gate."""

    def __init__(self, nf, ns: str, release_if: str):
        self.nf, self.ns = nf, ns
        self.prog_fd = bpfsys.obj_get(str(Path(nf.pin_dir) / "prog"))
        self.ifindex = netns.ifindex(release_if, ns)
        self.lock = threading.Lock()
        self.released = 0

    def close(self):
        if self.prog_fd >= 0:
            os.close(self.prog_fd)
            self.prog_fd = -1

    # A veth's receive ring holds 256 frames: a release burst larger than what the next hop
    # drains meanwhile overflows it (seen: 158 drops at the egress switch at 100k pps). Each
    # call stays under half a ring; between calls the softirq drains it.
    PER_CALL = 128

    def release(self, packets: list[Packet], rx: int = L.RX_RELEASED, batch: int = 32) -> int:
        """Replay packets (RX_RELEASED: from this instance's buffer, counted by the gate;
        RX_INJECTED: from elsewhere, processed as they are). Returns the last sequence number."""
        with self.lock:
            done = 0
            last = move_state(self.nf).release_cursor
            while done < len(packets):
                part = packets[done:done + self.PER_CALL]
                last = self._run(part, rx, batch)
                done += len(part)
            self.released += len(packets)
            return last

    def _run(self, part: list[Packet], rx: int, batch: int) -> int:
        n = len(part)
        cur = move_state(self.nf).release_cursor
        keys = (L.u32 * n)()
        slots = (L.ReleaseSlot * n)()
        for i, p in enumerate(part):
            if not 14 <= len(p.data) <= L.MAX_PKT:
                raise BadInput(f"packet of {len(p.data)} bytes cannot be released")
            keys[i] = (cur + i) % L.RELEASE_SLOTS
            s = slots[i]
            s.len, s.side, s.rx = len(p.data), p.side, rx
            ct.memmove(s.data, p.data, len(p.data))
        self.nf.maps["nfx_release"].update_batch(keys, slots, n)
        # a live run can stop part way (the kernel ends it early on a pending signal, or fails
        # to set it up): the cursor says how far it got, and only the rest is run again, so no
        # packet goes twice and none is left in its slot
        end, err = cur, None
        for _ in range(RELEASE_TRIES):
            left = cur + n - end
            try:
                with netns.enter(self.ns):
                    bpfsys.prog_test_run(self.prog_fd, FRAME0, repeat=left, live=True, ingress_ifindex=self.ifindex,
                                         batch_size=min(batch, left))
            except BpfError as e:
                err = e
            end = move_state(self.nf).release_cursor
            if end == cur + n:
                break
            log.warning("release run stopped at %d of %d slots (%s): running the rest again", end - cur, n, err)
            time.sleep(0.001)
        if end != cur + n:
            raise BpfError(f"release path consumed {end - cur} of {n} slots" + (f": {err}" if err else ""))
        if rx == L.RX_RELEASED:
            set_move_cfg(self.nf, flushed_seq=end)
        return end


# ---- packets on the management network ------------------------------------------------------
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


def keys_from_blob(blob: bytes) -> list:
    n = ct.sizeof(L.FlowKey)
    if len(blob) % n:
        raise BadInput("flow keys blob is not a whole number of keys")
    return list((L.FlowKey * (len(blob) // n)).from_buffer_copy(blob)) if blob else []
