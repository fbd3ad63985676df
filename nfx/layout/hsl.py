"""Mirror of bpf/include/nfx_hsl.h: SHarP's in-band handover messages."""
import ctypes as ct
import enum

from .flow import u8, u16, u32

TOS_HSL = 0xF4
HSL_MAGIC = 0x6E66686F
HSL_PORT = 4792
HSL_EPOCHS = 64


class HslKind(enum.IntEnum):
    START = 1
    ACK = 2
    END = 3
    DONE = 4
    TEST = 5


class HslHdr(ct.Structure):
    _fields_ = [("magic", u32), ("epoch", u32), ("kind", u8), ("side", u8), ("len", u16)]


MIRRORS = {"nfx_hsl_hdr": HslHdr}
