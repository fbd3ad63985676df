"""Consume a BPF ringbuf in bulk, straight from its mmapped pages (no callback per record).

libbpf's ring_buffer calls back once per record: from Python that is a ctypes callback and a
copy per record, ~0.4-0.5 M records/s. Here one poll copies every committed record in one slice
of the mapping and hands back the buffer with each record's offset and length; the walk over the
8-byte record headers is the only per-record work. The kernel maps the data pages twice in a
row, so a record that wraps around the end of the ring is contiguous in the mapping.

Layout (kernel/bpf/ringbuf.c, as libbpf maps it): page 0 of the map fd is the consumer position
(read-write), page 1 the producer position, then the data pages twice (read-only). A record is a
u32 length (bit 31: still being written, bit 30: discarded), a u32 page offset, then the data,
rounded up to 8 bytes. One consumer per ring, as with RingReader."""
import mmap
import os
import select
import struct

import numpy as np

from ..closing import ClosedWhenCollected
from ..errors import BpfError
from . import bpfsys as sys_

BUSY, DISCARD = 1 << 31, 1 << 30
HDR = 8
# native "Q": one 8-byte load or store (CPython copies it with memcpy); "<Q" goes byte by byte,
# and the kernel, reading the consumer position while it is half written, may see a ring that
# looks full (a torn write crossing a carry can put it megabytes behind) and refuse a record
_POS = struct.Struct("Q")


class MmapRing(ClosedWhenCollected):
    """MmapRing(map_fd): take(timeout_ms) -> (buffer, offsets, lengths) of the committed records,
    in the order the kernel committed them; the consumer position moves past them."""

    def __init__(self, map_fd: int, what: str = "ring"):
        self.what = what
        self.records = 0
        self.bytes = 0
        self.walks = {"vector": 0, "loop": 0}     # how takes found their records
        self._fd = os.dup(map_fd)
        self._cons = self._data = None
        try:
            info = sys_.map_info(self._fd)
            if info.type != sys_.MAP_RINGBUF:
                raise BpfError(f"{what}: fd {map_fd} is not a ringbuf (map type {info.type})")
            self.size = info.max_entries
            self.mask = self.size - 1
            page = mmap.PAGESIZE
            self._cons = mmap.mmap(self._fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._data = mmap.mmap(self._fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except (OSError, ValueError) as e:
            self.close()
            raise BpfError(f"cannot map the {what} ringbuf (fd {map_fd}): {e}") from None
        self._page = page
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def _positions(self) -> tuple[int, int]:
        return _POS.unpack_from(self._cons, 0)[0], _POS.unpack_from(self._data, 0)[0]

    def pending(self) -> int:
        """Bytes between the consumer and the producer (records and their headers)."""
        c, p = self._positions()
        return p - c

    def take(self, timeout_ms: int = 0, max_bytes: int = 0) -> tuple[bytes, list[int], list[int]]:
        """Every committed record (max_bytes: stop after about that many), waiting up to
        timeout_ms for the first (0: don't wait)."""
        if self._data is None:
            raise BpfError(f"{self.what} reader is closed")
        cons, prod = self._positions()
        if cons == prod and timeout_ms:
            self._poll.poll(timeout_ms)
            cons, prod = self._positions()
        if cons == prod:
            return b"", [], []
        start = self._page + (cons & self.mask)
        span = prod - cons if not max_bytes else min(prod - cons, max_bytes + 8 + (1 << 16))
        buf = self._data[start:start + span]     # one copy; the double mapping unwraps it
        got = self._walk_np(buf, cons, max_bytes) if len(buf) >= 4096 else None
        self.walks["loop" if got is None else "vector"] += 1
        offs, lens, at = got if got is not None else self._walk(buf, max_bytes)
        if at:
            _POS.pack_into(self._cons, 0, cons + at)      # x86 stores are ordered: a release
        self.records += len(offs)
        self.bytes += int(sum(lens))
        return buf, offs, lens

    @staticmethod
    def _walk(buf, max_bytes: int):
        """Record by record: (offsets, lengths, bytes consumed)."""
        u32 = memoryview(buf).cast("I")
        offs, lens = [], []
        at, end = 0, len(buf)
        limit = max_bytes or end
        while at < end and at < limit:
            ln = u32[at >> 2]
            if ln & BUSY:
                break                                     # not committed yet: the rest waits
            n = ln & ~(BUSY | DISCARD)
            if at + HDR + n > end:
                break                                     # cut off by max_bytes: next time
            if not ln & DISCARD:
                offs.append(at + HDR)
                lens.append(n)
            at += (n + HDR + 7) & ~7
        return offs, lens, at

    def _walk_np(self, buf, cons: int, max_bytes: int):
        """The same walk vectorised, or None (then _walk does it). A record header is a word whose
        high half is the page offset the kernel stores in it (its page in the ring plus a
        constant, learnt from the first header) and whose low half is a plausible length; the
        headers found must chain exactly (each one's length leads to the next, from the first
        to the end or to a record still being written), else None: a value word that looks
        like a header can only cost the fast path, never a wrong record."""
        W = np.frombuffer(buf, np.uint64)
        lo = (W & np.uint64(0xFFFFFFFF)).astype(np.int64)
        hi = (W >> np.uint64(32)).astype(np.int64)
        idx = np.arange(len(W), dtype=np.int64)
        page = ((cons + 8 * idx) & self.mask) >> (self._page.bit_length() - 1)
        n = lo & ~(BUSY | DISCARD)
        cand = np.flatnonzero((hi - page == hi[0] - page[0]) & (n & 7 == 0) & (n <= self.size))
        if not len(cand) or cand[0] != 0:
            return None
        c = cand * 8
        nn = n[cand]
        nxt = c + HDR + nn
        busy = np.flatnonzero(lo[cand] & BUSY)
        k = int(busy[0]) if len(busy) else len(cand)
        if max_bytes:
            k = min(k, int(np.searchsorted(c, max_bytes, "left")))
        if not k:
            return None
        chain = nxt[:k - 1] == c[1:k]
        if not chain.all():
            return None
        if k < len(cand):
            if nxt[k - 1] != c[k]:
                return None
        elif nxt[k - 1] != len(buf):
            return None
        keep = (lo[cand[:k]] & DISCARD) == 0
        return (c[:k] + HDR)[keep], nn[:k][keep], int(nxt[k - 1])

    def take_raw(self, timeout_ms: int = 0) -> list[bytes]:
        buf, offs, lens = self.take(timeout_ms)
        return [buf[o:o + n] for o, n in zip(offs, lens)]

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        for m in (self._cons, self._data):
            if m is not None:
                m.close()
        self._cons = self._data = None
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
