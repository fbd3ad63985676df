"""Mirror of bpf/include/nfx_keyread.h: a keyed read's request (bpf/keyread.bpf.c)."""
import ctypes as ct

from .flow import u32

KR_MAX = 256


class KrHead(ct.Structure):
    _fields_ = [("n", u32), ("found", u32), ("error", u32), ("pad", u32)]


MIRRORS = {"nfx_kr_head": KrHead}
