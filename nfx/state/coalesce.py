"""Batched sharing's deltas (issue 13; the cluster slides, seeds/cluster-state-management-slides.txt):
what one flow's packets did to an instance's state since its last batch, kept as one statelet per
entry, and batches on the wire.

A statelet carries NEW absolute values (nfx/state/statelets.py), so a flow's statelets since its
last batch coalesce without losing anything a replay needs: per entry, a deletion or a statelet of
another incarnation replaces what was kept; otherwise the fields add up (a counter keeps the
larger value, a flag set the OR, any other field the later value). Replaying the coalesced
statelet gives what replaying them all one by one gives.

A batch on the wire (BATCH_HDR, then one statelet record of `rec_len` bytes):
    flow key (16 bytes)  the flow as the stamper counted it (one direction)
    stamp (u32)          the stamp of the last packet in the batch (0: not stamped)
    packets (u32)        packets the batch covers
    rec_len (u32)        bytes of the record that follows: the coalesced statelets, back to back
"""
import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .. import layout as L
from ..errors import BadInput
from .statelets import MAX, OR, SCHEMAS, Update, encode, parse_record

SET, DEL = int(L.StOp.SET), int(L.StOp.DEL)
BATCH_HDR = struct.Struct("<16sIII")


def _fields(u: Update) -> dict[int, tuple]:
    """bit -> the field's words."""
    s = SCHEMAS[u.table]
    out, i = {}, 0
    for f in s.fields:
        if u.mask >> f.bit & 1:
            out[f.bit] = u.vals[i:i + f.words]
            i += f.words
    return out


def merge(old: Update, new: Update) -> Update:
    """One statelet that replays like `old` then `new` (same table and key)."""
    if new.op == DEL or old.op == DEL or new.inc != old.inc:
        return new
    s = SCHEMAS[new.table]
    a, b = _fields(old), _fields(new)
    for f in s.fields:
        if f.bit not in b:
            continue
        if f.bit in a and f.merge == MAX:
            b[f.bit] = (max(a[f.bit][0], b[f.bit][0]),)
        elif f.bit in a and f.merge == OR:
            b[f.bit] = (a[f.bit][0] | b[f.bit][0],)
    a.update(b)
    mask = old.mask | new.mask
    vals = tuple(w for f in s.fields if mask >> f.bit & 1 for w in a[f.bit])
    return Update(new.table, SET, new.key, mask, vals, new.inc)


class Delta:
    """One flow's statelets since its last batch, coalesced per entry (in first-touch order)."""
    __slots__ = ("entries", "packets", "stamp", "last")

    def __init__(self):
        self.entries: dict[tuple[int, bytes], Update] = {}
        self.packets = 0
        self.stamp = 0
        self.last = 0.0

    def add(self, ups: Iterable[Update]) -> None:
        e = self.entries
        for u in ups:
            k = (u.table, u.key)
            old = e.get(k)
            e[k] = u if old is None else merge(old, u)

    def record(self) -> bytes:
        return b"".join(encode(u) for u in self.entries.values())


def encode_batch(flow: bytes, stamp: int, packets: int, record: bytes) -> bytes:
    return BATCH_HDR.pack(flow, stamp, packets, len(record)) + record


class Batch(NamedTuple):
    flow: bytes
    stamp: int
    packets: int
    updates: list


def decode_batches(blob) -> Iterator[Batch]:
    mv = memoryview(blob).cast("B")
    off, n = 0, len(mv)
    while off < n:
        if off + BATCH_HDR.size > n:
            raise BadInput(f"truncated batch header at byte {off} of {n}")
        flow, stamp, packets, rl = BATCH_HDR.unpack_from(mv, off)
        off += BATCH_HDR.size
        if off + rl > n:
            raise BadInput(f"batch record of {rl} bytes runs past the end ({n - off} left)")
        yield Batch(bytes(flow), stamp, packets, parse_record(mv[off:off + rl]) if rl else [])
        off += rl
