"""Mirror of bpf/include/nfx_move.h: IBC and trigger frames, buffer records, release slots,
an instance's move config and state."""
import ctypes as ct
import enum

from .flow import FlowKey, u8, u16, u32, u64

TOS_IBC = 0xFC
IBC_MAGIC = 0x6E666962
TOS_FIRE = 0xF8
FIRE_MAGIC = 0x6E666672


class FirePayload(ct.Structure):
    _fields_ = [("magic", u32), ("pad", u32), ("token", u64)]


MAX_PKT = 1536
RELEASE_SLOTS = 4096
HOLD_SLOTS = 16384
HOLD_SLOTS_MAX = 1 << 16     # what --hold-slots may ask for (nfx/testbed/builder.py)
RX_PEER, RX_RELEASED, RX_INJECTED = 1, 2, 4
RX_DUP_SRC, RX_DUP_DST = 8, 16
DUP_TAG_HI, DUP_TAG_B4 = 0x026E6664, 0x75
DUP_TAG_SRC, DUP_TAG_DST = 1, 2
DUP_SOURCE, DUP_SHADOW, DUP_HOLD_OWN = 1, 2, 4


def dup_tag(i: int) -> bytes:
    """The source MAC a tagged duplication gives the copy to its i-th port (0: source, 1: dst)."""
    return DUP_TAG_HI.to_bytes(4, "big") + bytes([DUP_TAG_B4, i + 1])


class BufKind(enum.IntEnum):
    PACKET = 1
    TO_CTRL = 2
    IBC = 3


class BufHdr(ct.Structure):
    _fields_ = [("ts_ns", u64), ("key", FlowKey), ("len", u32), ("epoch", u32), ("kind", u8), ("side", u8),
                ("rx", u8), ("pad", u8 * 5)]


class ReleaseSlot(ct.Structure):
    _fields_ = [("len", u32), ("side", u8), ("rx", u8), ("pad", u16), ("seq", u32), ("epoch", u32),
                ("ts_ns", u64), ("data", u8 * MAX_PKT)]


class HoldState(ct.Structure):
    _fields_ = [("lock", u32), ("head", u32), ("cursor", u32), ("peak", u32), ("epoch", u32), ("untagged", u32),
                ("spilled", u32), ("pad", u32), ("max_wait_ns", u64)]


class MoveCfg(ct.Structure):
    _fields_ = [("epoch", u32), ("drain_epoch", u32), ("flushed_seq", u32), ("op", u32), ("peer_cut", u32),
                ("dup", u32), ("hold", u32)]


class MoveState(ct.Structure):
    _fields_ = [("ibc_switch", u32 * 2), ("ibc_peer", u32 * 2), ("release_cursor", u32), ("release_seq", u32)]


MIRRORS = {"nfx_fire_payload": FirePayload, "nfx_buf_hdr": BufHdr, "nfx_release_slot": ReleaseSlot,
           "nfx_hold_state": HoldState,
           "nfx_move_cfg": MoveCfg, "nfx_move_state": MoveState}
