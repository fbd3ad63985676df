"""ctypes mirror of bpf/include/nfx.h: the one place Python knows the shared layouts.
tests/bpf/test_layout.py checks every struct here against what BCC parsed from the header."""
import ctypes as ct
import enum
import hashlib

from .paths import BPF_INCLUDE

LAYOUT_VERSION = 2

u8, u16, u32, u64 = ct.c_uint8, ct.c_uint16, ct.c_uint32, ct.c_uint64


class FlowKey(ct.Structure):
    _fields_ = [("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16),
                ("proto", u8), ("pad", u8 * 3)]


class Action(enum.IntEnum):
    PROCESS = 0
    STATELET = 1
    BUFFER = 2
    REDIRECT = 3
    TO_CTRL = 4
    DROP = 5


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
    _fields_ = [("marks", u32), ("filters", u32)]


class Stat(enum.IntEnum):
    V_ABORTED = 0
    V_DROP = 1
    V_PASS = 2
    V_TX = 3
    V_REDIRECT = 4
    R_OK = 8
    R_TRUNC_ETH = 9
    R_VLAN = 10
    R_ARP = 11
    R_IPV6 = 12
    R_NON_IP = 13
    R_TRUNC_IP = 14
    R_BAD_VERSION = 15
    R_BAD_IHL = 16
    R_IP_OPTIONS = 17
    R_FRAGMENT = 18
    R_TRUNC_L4 = 19
    R_UNSUPP_PROTO = 20
    R_ICMP_NOT_ECHO = 21
    R_EMPTY_PAYLOAD = 22
    R_GATE_DROP = 23
    R_GATE_OTHER = 24
    R_NO_PORT = 25
    R_REDIRECT_FAIL = 26
    R_NAT_NEW = 27
    R_NAT_NOT_INSIDE = 28
    R_NAT_NO_MAPPING = 29
    R_NAT_PORTS_EXHAUSTED = 30
    R_NAT_MAP_FULL = 31
    R_NAT_EXPIRED = 32
    R_IDS_SIG_MATCH = 33
    R_IDS_SCAN_ALERT = 34
    R_IDS_RING_FULL = 35
    R_IDS_MAP_FULL = 36
    R_SW_HIT_EXACT = 37
    R_SW_HIT_WILD = 38
    R_SW_MISS = 39
    R_SW_CLONE_FAIL = 40
    R_SW_RING_FULL = 41
    R_SINK_FOREIGN = 42
    R_SINK_BAD_FLOW = 43
    R_GEN_SENT = 44
    R_SINK_RX = 45
    R_BUFFERED = 46
    R_BUF_RING_FULL = 47
    R_TO_CTRL = 48
    R_REDIRECTED = 49
    R_FROM_PEER = 50
    R_RELEASED = 51
    R_INJECTED = 52
    R_RELEASE_BAD = 53
    R_OP_PRE_IBC = 54
    R_IBC = 55
    R_STATELET = 56
    R_STATELET_RING_FULL = 57
    R_STATELET_BYTES = 58
    R_STATELET_PKT_BYTES = 59
    R_SW_FIRED = 60
    R_SW_FIRE_FULL = 61
    R_SW_ARMED = 62
    R_BAD_TOT_LEN = 63
    R_NAT_ICMP_ERR = 64
    R_NAT_ICMP_BAD = 65
    R_NAT_QUOTA = 66
    R_IDS_UNINSPECTED = 67
    R_FORGED = 68


STAT_MAX = 96

SIDE_IN, SIDE_OUT = 0, 1
TX_SLOTS = 8


class Mac(ct.Structure):
    _fields_ = [("addr", u8 * 6)]


class PortCfg(ct.Structure):
    _fields_ = [("ifindex", u32 * 2), ("mac", Mac * 2), ("peer_mac", Mac * 2), ("release_ifindex", u32),
                ("peer_ifindex", u32 * TX_SLOTS)]


TOS_IBC = 0xFC
IBC_MAGIC = 0x6E666962
TOS_FIRE = 0xF8
FIRE_MAGIC = 0x6E666672


class FirePayload(ct.Structure):
    _fields_ = [("magic", u32), ("pad", u32), ("token", u64)]
MAX_PKT = 1536
RELEASE_SLOTS = 4096
RX_PEER, RX_RELEASED, RX_INJECTED = 1, 2, 4


class BufKind(enum.IntEnum):
    PACKET = 1
    TO_CTRL = 2
    IBC = 3


class BufHdr(ct.Structure):
    _fields_ = [("ts_ns", u64), ("key", FlowKey), ("len", u32), ("epoch", u32), ("kind", u8), ("side", u8),
                ("rx", u8), ("pad", u8 * 5)]


class ReleaseSlot(ct.Structure):
    _fields_ = [("len", u32), ("side", u8), ("rx", u8), ("pad", u16), ("pad2", u32 * 2),
                ("data", u8 * MAX_PKT)]


class MoveCfg(ct.Structure):
    _fields_ = [("epoch", u32), ("drain_epoch", u32), ("flushed_seq", u32), ("op", u32), ("peer_cut", u32),
                ("pad", u32)]


class MoveState(ct.Structure):
    _fields_ = [("ibc_switch", u32 * 2), ("ibc_peer", u32 * 2), ("release_cursor", u32), ("pad", u32)]


class NatTimeout(enum.IntEnum):
    UDP = 0
    TCP = 1
    TCP_CLOSED = 2
    ICMP = 3


class NatCfg(ct.Structure):
    _fields_ = [("inside_net", u32), ("inside_mask", u32), ("pool_base", u32), ("pool_count", u32),
                ("port_lo", u16), ("port_hi", u16), ("ncpu", u32), ("timeout_ns", u64 * 4),
                ("host_quota", u32), ("pad", u32)]


TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


class NatEntry(ct.Structure):
    _fields_ = [("peer", FlowKey), ("pkts", u64), ("bytes", u64), ("created_ns", u64),
                ("last_seen_ns", u64), ("tcp_flags", u32), ("pad", u32)]


class NatEntryV2(ct.Structure):
    """struct nfx_nat_entry built with NFX_NAT_V2 (a layout change for hot-upgrade conversions)."""
    _fields_ = [("peer", FlowKey), ("pkts", u64), ("bytes", u64), ("max_len", u64), ("created_ns", u64),
                ("last_seen_ns", u64), ("tcp_flags", u32), ("pad", u32)]


class NatPort(ct.Structure):
    _fields_ = [("addr", u32), ("port", u16), ("proto", u8), ("pad", u8)]


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


class StOp(enum.IntEnum):
    SET = 1
    DEL = 2


class Statelet(ct.Structure):
    """Header of one entry's statelet; key and value words follow (see nfx.h)."""
    _fields_ = [("table", u8), ("op", u8), ("nval", u8), ("mask", u8), ("inc", u32)]


class StfNat(enum.IntEnum):
    """Field bits of a NAT entry statelet: NatEntry's fields in order, pad left out."""
    PEER = 0
    PKTS = 1
    BYTES = 2
    CREATED_NS = 3
    LAST_SEEN_NS = 4
    TCP_FLAGS = 5


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


STF_VALUE = 0

SW_MAX_PORTS = 4
SW_MAX_WILD = 16
SW_MAX_RULES = 4096
SW_MAX_FIRED = 1024
SW_PORT_SLOTS = 64
SW_PORT_HOST, SW_PORT_NF = 1, 2
SW_OUTPUT, SW_SET_TOS, SW_CLEAR_TOS, SW_TO_CTRL, SW_DROP = 0x01, 0x02, 0x04, 0x08, 0x10


class SwRule(ct.Structure):
    _fields_ = [("actions", u32), ("nports", u32), ("ports", u32 * SW_MAX_PORTS), ("tos", u8),
                ("pad", u8 * 3), ("used", u32), ("token", u64)]


class SwWild(ct.Structure):
    _fields_ = [("in_port", u32), ("saddr", u32), ("smask", u32), ("daddr", u32), ("dmask", u32),
                ("sport", u16), ("dport", u16), ("proto", u8), ("used", u8), ("prio", u16), ("rule", u32)]


class SwCfg(ct.Structure):
    _fields_ = [("ibc_epoch", u32), ("pad", u32)]


class SwCounter(ct.Structure):
    _fields_ = [("pkts", u64), ("bytes", u64)]


class SwCtrlHdr(ct.Structure):
    _fields_ = [("len", u32), ("in_port", u32), ("rule", u32), ("pad", u32), ("ts_ns", u64)]


GEN_MAGIC = 0x6E667821


class GenPayload(ct.Structure):
    _fields_ = [("magic", u32), ("flow", u32), ("seq", u32), ("pad", u32), ("tx_ns", u64)]


class GenCfg(ct.Structure):
    _fields_ = [("nflows", u32), ("flows_per_addr", u32), ("sport_base", u16), ("l4_off", u16),
                ("frame_len", u16), ("proto", u8), ("pad", u8), ("tx_slot", u32)]


class GenTmpl(ct.Structure):
    _fields_ = [("hdr", u8 * 64)]


class SinkFlow(ct.Structure):
    _fields_ = [("received", u64), ("dup", u64), ("reordered", u64), ("distinct", u64),
                ("out_of_window", u64), ("high", u64)]


class SinkWord(ct.Structure):
    _fields_ = [("bits", u64), ("blk", u32), ("epoch", u32)]


class SinkCfg(ct.Structure):
    _fields_ = [("epoch", u32), ("pad", u32)]


LAT_SUB = 4
LAT_BUCKETS = 128

# struct name in nfx.h -> mirror; the layout test walks this table
MIRRORS = {
    "nfx_flow_key": FlowKey, "nfx_mark": Mark, "nfx_mac": Mac, "nfx_filter": Filter, "nfx_gate_cfg": GateCfg, "nfx_buf_hdr": BufHdr, "nfx_release_slot": ReleaseSlot, "nfx_move_cfg": MoveCfg, "nfx_move_state": MoveState, "nfx_port_cfg": PortCfg,
    "nfx_nat_cfg": NatCfg, "nfx_nat_entry": NatEntry, "nfx_nat_port": NatPort,
    "nfx_ids_flow": IdsFlow, "nfx_ids_host": IdsHost, "nfx_ids_hostport": IdsHostPort,
    "nfx_ids_sig": IdsSig, "nfx_ids_cfg": IdsCfg, "nfx_ids_alert": IdsAlert,
    "nfx_sw_rule": SwRule, "nfx_fire_payload": FirePayload, "nfx_sw_wild": SwWild, "nfx_sw_counter": SwCounter, "nfx_sw_cfg": SwCfg,
    "nfx_sw_ctrl_hdr": SwCtrlHdr, "nfx_gen_payload": GenPayload, "nfx_gen_cfg": GenCfg,
    "nfx_gen_tmpl": GenTmpl, "nfx_sink_flow": SinkFlow, "nfx_sink_word": SinkWord, "nfx_sink_cfg": SinkCfg,
    "nfx_statelet": Statelet,
}


def layout_hash() -> str:
    """Hash of the header text: what a state file records so a mismatched import is refused."""
    return hashlib.sha256((BPF_INCLUDE / "nfx.h").read_bytes()).hexdigest()[:16]


def describe(struct) -> list[tuple[str, int, int]]:
    return [(name, getattr(struct, name).offset, getattr(struct, name).size) for name, _ in struct._fields_]
