"""The switch's controller ring (sw_ctrl): what the switch copies to the controller, a rule's
packet or an in-band handover message (nfx/control/switch.py), and its reader."""
import ctypes as ct
import time
from typing import Iterator, NamedTuple

from .. import layout as L
from ..loader.ring import RingReader

Port = str | int          # a port by name, or by ifindex where no name resolves


class CtrlPacket(NamedTuple):
    in_port: Port                # ifname when it resolves, else the ifindex
    rule: int                    # L.SW_RULE_HSL for an HSL message
    data: bytes

    @property
    def hsl(self) -> bool:
        """An HSL message the switch took (nfx/frames.py parse_hsl reads it), not a rule's copy."""
        return self.rule == L.SW_RULE_HSL


class CtrlReader(RingReader):
    """Consumer of the controller ring, on any fd of it (BCC's table or a pin). A ring should
    have one reader: every reader sees every record."""

    def __init__(self, ring_fd: int, port_name=lambda i: i):
        self._port_name = port_name
        self._ready: list[CtrlPacket] = []                   # taken, not yet handed out
        super().__init__(ring_fd, self._decode, "controller")

    def _decode(self, raw: bytes) -> CtrlPacket | None:
        hsz = ct.sizeof(L.SwCtrlHdr)
        if len(raw) < hsz:
            return None
        h = L.SwCtrlHdr.from_buffer_copy(raw[:hsz])
        return CtrlPacket(self._port_name(h.in_port), h.rule, raw[hsz:hsz + min(h.len, len(raw) - hsz)])

    def poll(self, timeout_ms: int = 100) -> list[CtrlPacket]:
        """Wait up to timeout_ms for records; return what arrived."""
        out, self._ready = self._ready + super().poll(timeout_ms), []
        return out

    def drain(self) -> list[CtrlPacket]:
        """Whatever is in the ring now, without waiting."""
        return self.poll(0)

    def packets(self, count: int | None = None, timeout: float = 1.0) -> Iterator[CtrlPacket]:
        """Yield packets until `count` arrived or `timeout` seconds pass without enough."""
        deadline, n = time.monotonic() + timeout, 0
        while count is None or n < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            got = self._ready or self.poll(max(1, int(left * 1000)))
            self._ready = []
            if count is not None:
                got, self._ready = got[:count - n], got[count - n:]   # keep the rest for later
            for p in got:
                n += 1
                yield p
