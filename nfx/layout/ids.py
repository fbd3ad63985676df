"""Mirror of bpf/include/nfx_ids.h: the IDS's state, signatures, config, alerts, counters and
statelet field bits."""
import ctypes as ct
import enum

from .flow import FlowKey, u8, u16, u32, u64


class IdsFlow(ct.Structure):
    _fields_ = [("pkts", u64), ("bytes", u64), ("first_ns", u64), ("last_ns", u64),
                ("sig_hits", u32), ("tcp_flags", u32)]


class IdsHost(ct.Structure):
    _fields_ = [("pkts", u64), ("bytes", u64), ("flows", u32), ("dports", u32), ("alerts", u32),
                ("scan_alerted", u32)]


class IdsHostPort(ct.Structure):
    _fields_ = [("saddr", u32), ("dport", u16), ("proto", u8), ("pad", u8)]


IDS_MAX_SIGS = 16
IDS_SIG_LEN = 16


class IdsSig(ct.Structure):
    _fields_ = [("id", u32), ("offset", u16), ("len", u8), ("proto", u8), ("pattern", u8 * IDS_SIG_LEN)]


class IdsCfg(ct.Structure):
    _fields_ = [("scan_threshold", u32), ("nsigs", u32), ("drop_uninspected", u32), ("pad", u32)]


class AlertKind(enum.IntEnum):
    SIG = 1
    SCAN = 2


class IdsAlert(ct.Structure):
    _fields_ = [("ts_ns", u64), ("key", FlowKey), ("kind", u32), ("sig_id", u32)]


class IdsGlobal(enum.IntEnum):
    PKTS = 0
    BYTES = 1
    FLOWS = 2
    HOSTS = 3
    SIG_HITS = 4
    ALERTS = 5
    PORTS = 6


IDS_G_MAX = 8


class StfIdsFlow(enum.IntEnum):
    PKTS = 0
    BYTES = 1
    FIRST_NS = 2
    LAST_NS = 3
    SIG_HITS = 4
    TCP_FLAGS = 5


class StfIdsHost(enum.IntEnum):
    PKTS = 0
    BYTES = 1
    FLOWS = 2
    DPORTS = 3
    ALERTS = 4
    SCAN_ALERTED = 5


MIRRORS = {"nfx_ids_flow": IdsFlow, "nfx_ids_host": IdsHost, "nfx_ids_hostport": IdsHostPort,
           "nfx_ids_sig": IdsSig, "nfx_ids_cfg": IdsCfg, "nfx_ids_alert": IdsAlert}
