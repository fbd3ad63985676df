"""Mirror of bpf/include/nfx_flow.h: the flow key, the verdict/reason counters, an NF's wiring."""
import ctypes as ct
import enum

LAYOUT_VERSION = 2

u8, u16, u32, u64 = ct.c_uint8, ct.c_uint16, ct.c_uint32, ct.c_uint64


class FlowKey(ct.Structure):
    _fields_ = [("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16),
                ("proto", u8), ("pad", u8 * 3)]


TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


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
    R_HSL = 69
    R_DUP_COPY_SRC = 70
    R_DUP_COPY_DST = 71
    R_SHADOW = 72
    R_SHADOW_BYTES = 73
    R_STATELET_TOO_BIG = 74
    R_HOLD_SPILLED = 75
    R_RELEASE_WAIT = 76
    R_HOLD_STALE = 77
    R_STAMPED = 78
    R_STAMP_KEPT = 79
    R_STAMP_LOST = 80
    R_STAMP_TRIM_FAIL = 81
    R_SHARED = 82
    R_SINK_BAD_LEN = 83
    R_SINK_BAD_PAYLOAD = 84
    R_SHARE_QUIET = 85
    R_NF_RUN = 86
    R_GEN_TX_FAIL = 87


STAT_MAX = 96

# the stamper's trailer, past the IPv4 datagram (both words in network order)
STAMP_MAGIC = 0x6e667873
STAMP_LEN = 8
# a link that carries stamped frames fits a full-size frame plus the trailer (a veth drops what
# exceeds its receiving end's MTU)
STAMP_MTU = 1500 + STAMP_LEN


class Stamp(ct.Structure):
    _fields_ = [("magic", u32), ("count", u32)]


SIDE_IN, SIDE_OUT = 0, 1
TX_SLOTS = 16


class Mac(ct.Structure):
    _fields_ = [("addr", u8 * 6)]


class PortCfg(ct.Structure):
    _fields_ = [("ifindex", u32 * 2), ("mac", Mac * 2), ("peer_mac", Mac * 2), ("release_ifindex", u32),
                ("peer_ifindex", u32 * TX_SLOTS)]


MIRRORS = {"nfx_flow_key": FlowKey, "nfx_mac": Mac, "nfx_port_cfg": PortCfg, "nfx_stamp": Stamp}
