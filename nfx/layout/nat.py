"""Mirror of bpf/include/nfx_nat.h: the NAT's config, entries, port pool, statelet field bits."""
import ctypes as ct
import enum

from .flow import FlowKey, u8, u16, u32, u64


class NatTimeout(enum.IntEnum):
    UDP = 0
    TCP = 1
    TCP_CLOSED = 2
    ICMP = 3


class NatCfg(ct.Structure):
    _fields_ = [("inside_net", u32), ("inside_mask", u32), ("pool_base", u32), ("pool_count", u32),
                ("port_lo", u16), ("port_hi", u16), ("ncpu", u32), ("timeout_ns", u64 * 4),
                ("host_quota", u32), ("pad", u32)]


class NatEntry(ct.Structure):
    _fields_ = [("peer", FlowKey), ("pkts", u64), ("bytes", u64), ("created_ns", u64),
                ("last_seen_ns", u64), ("tcp_flags", u32), ("pad", u32)]


class NatEntryV2(ct.Structure):
    """struct nfx_nat_entry built with NFX_NAT_V2 (a layout change for hot-upgrade conversions)."""
    _fields_ = [("peer", FlowKey), ("pkts", u64), ("bytes", u64), ("max_len", u64), ("created_ns", u64),
                ("last_seen_ns", u64), ("tcp_flags", u32), ("pad", u32)]


class NatPort(ct.Structure):
    _fields_ = [("addr", u32), ("port", u16), ("proto", u8), ("pad", u8)]


class StfNat(enum.IntEnum):
    """Field bits of a NAT entry statelet: NatEntry's fields in order, pad left out."""
    PEER = 0
    PKTS = 1
    BYTES = 2
    CREATED_NS = 3
    LAST_SEEN_NS = 4
    TCP_FLAGS = 5


MIRRORS = {"nfx_nat_cfg": NatCfg, "nfx_nat_entry": NatEntry, "nfx_nat_port": NatPort}
