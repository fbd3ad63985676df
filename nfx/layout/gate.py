"""Mirror of bpf/include/nfx_gate.h: actions, per-flow marks, filters, the gate's config."""
import ctypes as ct
import enum

from .flow import u8, u16, u32


class Action(enum.IntEnum):
    PROCESS = 0
    STATELET = 1
    BUFFER = 2
    REDIRECT = 3
    TO_CTRL = 4
    DROP = 5
    DUP_HOLD = 6


class SpinLock(ct.Structure):
    _fields_ = [("val", u32)]


class Mark(ct.Structure):
    _fields_ = [("lock", SpinLock), ("action", u32), ("buffered", u32), ("released", u32),
                ("last_release", u32), ("peer", u32), ("tag", u32), ("epoch", u32)]


MAX_FILTERS = 8
FILTER_USED = 1
FILTER_BIDIR = 2


class Filter(ct.Structure):
    _fields_ = [("saddr", u32), ("smask", u32), ("daddr", u32), ("dmask", u32),
                ("sport", u16), ("dport", u16), ("proto", u8), ("action", u8), ("flags", u8),
                ("pad", u8), ("peer", u32), ("tag", u32)]


class GateCfg(ct.Structure):
    _fields_ = [("marks", u32), ("filters", u32), ("share", u32), ("share_batch", u32)]


MIRRORS = {"nfx_mark": Mark, "nfx_filter": Filter, "nfx_gate_cfg": GateCfg}
