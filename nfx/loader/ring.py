"""Consume a BPF ringbuf from its map fd (the program's own, or one opened from a pin in any
process) through libbpf's ring_buffer API as libbcc exports it. Records come back in the order
the kernel committed them: as raw bytes (poll_raw) or through a decode function (poll).

A ringbuf has one consumer position: a second reader on the same ring competes for records, it
does not get copies. Open one reader per ring and fan out in user space."""
import ctypes as ct
import os
import platform
from collections.abc import Callable

from ..closing import ClosedWhenCollected
from ..errors import BpfError


class RingStandIn(ct.Structure):
    """A ringbuf map has no key or value: a 0-byte stand-in so an NF's map table can name the ring
    and open and pin it like the rest (read it with a RingReader, not as a map)."""
    _fields_ = []


class _EpollEvent(ct.Structure):
    if platform.machine() == "x86_64":
        _pack_ = 1                  # the kernel packs struct epoll_event there (only there)
    _fields_ = [("events", ct.c_uint32), ("data", ct.c_uint64)]


EPOLLIN, EPOLL_CTL_ADD = 0x1, 1


class RingReader(ClosedWhenCollected):
    """RingReader(map_fd, decode=None): poll() returns decode(record) for every record, leaving
    out the ones decode maps to None (no decode: the raw bytes); poll_raw() the raw bytes."""

    def __init__(self, map_fd: int, decode: Callable[[bytes], object] | None = None, what: str = "ring"):
        from bcc.libbcc import _RINGBUF_CB_TYPE, lib
        self._lib = lib
        self.decode = decode
        self.what = what
        self.records = 0          # consumed so far
        self.bytes = 0
        self._rb = None
        # our own fd: libbpf keeps polling the one it was given, whoever else closes theirs
        self._fd = os.dup(map_fd)
        self._pending: list[bytes] = []
        self._cb = _RINGBUF_CB_TYPE(self._on_record)   # keep a reference: C calls it later
        self._rb = lib.bpf_new_ringbuf(self._fd, self._cb, None)
        if not self._rb:
            os.close(self._fd)
            raise BpfError(f"cannot open the {what} ringbuf (fd {map_fd})")
        self._wake_fd = -1

    def wake(self) -> None:
        """End a poll_raw() that waits, now or next (another thread's): an eventfd in libbpf's
        epoll set, as ring 0 (what libbpf reads then is the ring itself: harmless)."""
        if self._wake_fd < 0:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            ev = _EpollEvent(EPOLLIN, 0)
            libc = ct.CDLL(None, use_errno=True)
            epoll_fd = self._lib.ring_buffer__epoll_fd
            epoll_fd.argtypes, epoll_fd.restype = [ct.c_void_p], ct.c_int
            if libc.epoll_ctl(epoll_fd(self._rb), EPOLL_CTL_ADD, fd, ct.byref(ev)) != 0:
                os.close(fd)
                raise BpfError(f"cannot add a wake-up to the {self.what} ringbuf's epoll: "
                               f"{os.strerror(ct.get_errno())}")
            self._wake_fd = fd
        os.eventfd_write(self._wake_fd, 1)

    def _on_record(self, _ctx, data, size) -> int:
        self._pending.append(ct.string_at(data, size))
        return 0

    def poll_raw(self, timeout_ms: int = 0) -> list[bytes]:
        """Records that arrived, waiting up to timeout_ms for the first one (0: don't wait)."""
        if not self._rb:
            raise BpfError(f"{self.what} reader is closed")
        if timeout_ms:
            self._lib.bpf_poll_ringbuf(self._rb, timeout_ms)
            if self._wake_fd >= 0:
                try:
                    os.eventfd_read(self._wake_fd)      # level-triggered: read, or every poll returns at once
                except BlockingIOError:
                    pass
        self._lib.bpf_consume_ringbuf(self._rb)
        out, self._pending = self._pending, []
        self.records += len(out)
        self.bytes += sum(map(len, out))
        return out

    def poll(self, timeout_ms: int = 0) -> list:
        raw = self.poll_raw(timeout_ms)
        if self.decode is None:
            return raw
        return [x for x in map(self.decode, raw) if x is not None]

    @property
    def closed(self) -> bool:
        return not self._rb

    def close(self) -> None:
        if self._rb:
            self._lib.bpf_free_ringbuf(self._rb)
            self._rb = None
            os.close(self._fd)
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1
