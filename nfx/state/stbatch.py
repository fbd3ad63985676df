"""Statelets in bulk: many ring records parsed at once into numpy arrays (one entry per statelet,
in ring order), for the fast replay in nfx/state/fastapply.py. The one Python loop steps from
statelet header to statelet header; everything else is vectorised. Checks what parse_record
checks, and raises the same BadInput (by re-parsing the bad record with it)."""
import numpy as np

from .. import layout as L
from ..errors import BadInput
from .statelets import ANY, WORD, _value_words, encode, parse_record

NKEY = [0] * 256                   # key words by table id (0: unknown, refused below)
NVAL = np.zeros((256, 256), np.int64) - 1      # value words by (table, mask), -1: no such table
INCARN = np.zeros(256, bool)       # tables whose statelets carry incarnations
for _t, _s in ANY.items():            # STAMP too: parsed here, skipped by replay
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


NKEY_NP = np.array(NKEY, np.int64)


def _bad(buf, offs, lens, word: int, why: str):
    """Raise parse_record's error for the record holding `word` (or ours)."""
    for o, n in zip(offs, lens):
        if o <= word * WORD < o + max(n, 1):
            parse_record(bytes(memoryview(buf)[o:o + n]))
    raise BadInput(why)


def parse_span(buf, offs, lens) -> Batch:
    """The statelets of the records at buf[offs[i]:offs[i] + lens[i]] (as MmapRing.take gives).
    All records are walked at once: pass k takes the k-th statelet of every record still open."""
    o, n = np.asarray(offs, np.int64), np.asarray(lens, np.int64)
    if len(buf) % WORD or (len(o) and ((o | n) % WORD).any()):
        bad = np.flatnonzero((o | n) % WORD) if len(o) else []
        i = int(bad[0]) if len(bad) else 0
        if len(o):
            parse_record(bytes(memoryview(buf)[offs[i]:offs[i] + lens[i]]))
        raise BadInput("statelet records not in whole 8-byte words")
    W = np.frombuffer(buf, np.uint64) if len(buf) else np.zeros(0, np.uint64)
    pos, end = o // WORD, (o + n) // WORD
    found = []
    while len(pos):
        live = pos < end
        pos, end = pos[live], end[live]
        if not len(pos):
            break
        found.append(pos)
        h = W[pos]
        pos = pos + 1 + NKEY_NP[(h & 0xFF).astype(np.int64)] + (h >> 16 & 0xFF).astype(np.int64)
        over = pos > end
        if over.any():
            _bad(buf, offs, lens, int(found[-1][np.argmax(over)]), "statelet record does not end on a statelet")
    start = np.sort(np.concatenate(found)) if found else np.zeros(0, np.int64)
    b = Batch()
    b.W, b.start = W, start
    h = W[start]
    b.table = (h & 0xFF).astype(np.int64)
    b.op = (h >> 8 & 0xFF).astype(np.int64)
    b.nval = (h >> 16 & 0xFF).astype(np.int64)
    b.mask = (h >> 24 & 0xFF).astype(np.int64)
    b.inc = (h >> 32).astype(np.int64)
    b.records = len(offs)
    b.nbytes = int(n.sum())
    b.buf, b.offs, b.lens = buf, offs, lens
    bad = (NVAL[b.table, b.mask] != b.nval) | ((b.op != L.StOp.SET) & (b.op != L.StOp.DEL)) | \
          ((b.op == L.StOp.DEL) & (b.mask != 0)) | (~INCARN[b.table] & (b.inc != 0))
    if bad.any():
        _bad(buf, offs, lens, int(start[np.argmax(bad)]), "malformed statelet")
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


def poll_batch(reader, timeout_ms: int = 0, max_bytes: int = 0) -> Batch:
    """What a StateletReader's ring holds, parsed in bulk (len() statelets, .records records);
    replay it with fastapply.StreamApplier.apply or replay.apply."""
    return parse_span(*reader.poll_span(timeout_ms, max_bytes))
