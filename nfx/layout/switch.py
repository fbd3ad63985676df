"""Mirror of bpf/include/nfx_switch.h: the switch's rules, matches, counters and records."""
import ctypes as ct
import enum

from .flow import u8, u16, u32, u64

SW_MAX_PORTS = 4
SW_MAX_WILD = 16
SW_MAX_RULES = 4096
SW_MAX_FIRED = 1024
SW_PORT_SLOTS = 64
SW_PORT_HOST, SW_PORT_NF, SW_PORT_TRUNK = 1, 2, 4
SW_MAX_STAMPS = 65536
SW_OUTPUT, SW_SET_TOS, SW_CLEAR_TOS, SW_TO_CTRL, SW_DROP = 0x01, 0x02, 0x04, 0x08, 0x10
SW_TAG = 0x20
SW_SPREAD = 0x40
SW_SPREAD_PORTS = 16
SW_SPREAD_HASH, SW_SPREAD_SLICE = 0, 1
SW_RULE_HSL = 4096


class SwReason(enum.IntEnum):
    """enum nfx_sw_reason: the switch's own reasons (sw_reasons), read as r_sw_<name>."""
    HSL = 0
    HSL_TEST = 1
    HSL_FORGED = 2
    STAMPED = 3
    STAMP_FAIL = 4
    STAMP_SKIPPED = 5
    STAMP_TOO_BIG = 6
    SPREAD_NO_SLICE = 7
    IBC = 8


SW_R_MAX = 16


class SwRule(ct.Structure):
    _fields_ = [("actions", u32), ("nports", u32), ("ports", u32 * SW_MAX_PORTS), ("tos", u8),
                ("pad", u8 * 3), ("used", u32), ("token", u64)]


class SwWild(ct.Structure):
    _fields_ = [("in_port", u32), ("saddr", u32), ("smask", u32), ("daddr", u32), ("dmask", u32),
                ("sport", u16), ("dport", u16), ("proto", u8), ("used", u8), ("prio", u16), ("rule", u32)]


class SwSpread(ct.Structure):
    _fields_ = [("mode", u32), ("nports", u32), ("ports", u32 * SW_SPREAD_PORTS), ("lo", u32), ("span", u32)]


class SwCfg(ct.Structure):
    _fields_ = [("ibc_epoch", u32), ("stamp", u32)]


class SwCounter(ct.Structure):
    _fields_ = [("pkts", u64), ("bytes", u64), ("last_ns", u64)]


class SwCtrlHdr(ct.Structure):
    _fields_ = [("len", u32), ("in_port", u32), ("rule", u32), ("pad", u32), ("ts_ns", u64)]


MIRRORS = {"nfx_sw_rule": SwRule, "nfx_sw_wild": SwWild, "nfx_sw_cfg": SwCfg, "nfx_sw_spread": SwSpread, "nfx_sw_counter": SwCounter,
           "nfx_sw_ctrl_hdr": SwCtrlHdr}
