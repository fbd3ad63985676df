"""Statelets in bulk: many ring records parsed at once into numpy arrays (one entry per statelet,
in ring order), for the fast replay in nfx/state/fastapply.py. The one Python loop steps from
statelet header to statelet header; everything else is vectorised. Checks what parse_record
checks, and raises the same BadInput (by re-parsing the bad record with it)."""
import numpy as np

from .. import layout as L
from ..errors import BadInput
from .statelets import SCHEMAS, WORD, _value_words, encode, parse_record

NKEY = [0] * 256                   # key words by table id (0: unknown, refused below)
NVAL = np.zeros((256, 256), np.int64) - 1      # value words by (table, mask), -1: no such table
INCARN = np.zeros(256, bool)       # tables whose statelets carry incarnations
for _t, _s in SCHEMAS.items():
    NKEY[_t] = _s.nkey
    INCARN[_t] = bool(_s.incarnation)
    for _m in range(256):
        NVAL[_t, _m] = _value_words(_s, _m) if _m <= _s.full_mask else -1


class Batch:
    """Statelets of a run of records: W (the records' 8-byte words, uint64), and per statelet,
    in order: start (word index of its header), table, op, nval, mask, inc. Values start at
    start + 1 + nkey."""
    __slots__ = ("W", "start", "table", "op", "nval", "mask", "inc", "records", "nbytes", "buf", "offs", "lens")

    def __len__(self) -> int:
        return len(self.start)

    def raw_records(self) -> list[bytes]:
        """The records the batch was parsed from, as bytes (what poll_raw gives)."""
        return [bytes(self.buf[o:o + n]) for o, n in zip(self.offs, self.lens)]


def _walk(buf, offs, lens) -> list[int]:
    W = memoryview(buf).cast("Q") if len(buf) % WORD == 0 else None
    starts = []
    add = starts.append
    nk = NKEY
    for o, n in zip(offs, lens):
        if o % WORD or n % WORD or W is None:
            parse_record(bytes(memoryview(buf)[o:o + n]))      # raises
            raise BadInput("statelet record not aligned to 8-byte words")
        i, end = o >> 3, (o + n) >> 3
        while i < end:
            h = W[i]
            add(i)
            i += 1 + nk[h & 0xFF] + (h >> 16 & 0xFF)
        if i != end:
            parse_record(bytes(memoryview(buf)[o:o + n]))      # raises
            raise BadInput(f"statelet record of {n} bytes does not end on a statelet")
    return starts


def parse_span(buf, offs, lens) -> Batch:
    """The statelets of the records at buf[offs[i]:offs[i] + lens[i]] (as MmapRing.take gives)."""
    starts = _walk(buf, offs, lens)
    b = Batch()
    b.W = np.frombuffer(buf, np.uint64) if len(buf) else np.zeros(0, np.uint64)
    b.start = np.asarray(starts, np.int64)
    h = b.W[b.start]
    b.table = (h & 0xFF).astype(np.int64)
    b.op = (h >> 8 & 0xFF).astype(np.int64)
    b.nval = (h >> 16 & 0xFF).astype(np.int64)
    b.mask = (h >> 24 & 0xFF).astype(np.int64)
    b.inc = (h >> 32).astype(np.int64)
    b.records = len(offs)
    b.nbytes = sum(lens)
    b.buf, b.offs, b.lens = buf, offs, lens
    bad = (NVAL[b.table, b.mask] != b.nval) | ((b.op != L.StOp.SET) & (b.op != L.StOp.DEL)) | \
          ((b.op == L.StOp.DEL) & (b.mask != 0)) | (~INCARN[b.table] & (b.inc != 0))
    if bad.any():
        first = int(b.start[np.argmax(bad)]) * WORD
        for o, n in zip(offs, lens):
            if o <= first < o + n:
                parse_record(bytes(memoryview(buf)[o:o + n]))  # raises with the details
        raise BadInput(f"malformed statelet at byte {first}")
    return b


def parse_records(records) -> Batch:
    """A Batch from a list of records (bytes), e.g. what poll_raw/drain returned."""
    buf = b"".join(records)
    offs, at = [], 0
    lens = [len(r) for r in records]
    for n in lens:
        offs.append(at)
        at += n
    return parse_span(buf, offs, lens)


def parse_updates(ups) -> Batch:
    """A Batch from Updates (one record each)."""
    return parse_records([encode(u) for u in ups])
