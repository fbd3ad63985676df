"""Mirror of bpf/include/nfx_statelet.h: the records a mirrored packet's state updates make.
The field bits of each NF's values sit beside its structs (nat.py, ids.py)."""
import ctypes as ct
import enum

from .flow import u8, u32

STATELET_WORDS = 128
STATELET_INC_SHIFT = 10


class StTable(enum.IntEnum):
    """Which map a statelet updates (enum nfx_st_table)."""
    NAT_FWD = 1
    NAT_REV = 2
    NAT_PORTS = 3
    IDS_FLOWS = 4
    IDS_HOSTS = 5
    IDS_HOSTPORTS = 6
    STAMP = 7            # no map: the packet's flow key and stamp (nfx_statelet.h)


class StOp(enum.IntEnum):
    SET = 1
    DEL = 2


class Statelet(ct.Structure):
    """Header of one entry's statelet; key and value words follow (see nfx_statelet.h)."""
    _fields_ = [("table", u8), ("op", u8), ("nval", u8), ("mask", u8), ("inc", u32)]


STF_VALUE = 0

MIRRORS = {"nfx_statelet": Statelet}
