"""Mirror of bpf/include/nfx_bench.h: the traffic generator's and the sink's layouts."""
import ctypes as ct

from .flow import u8, u16, u32, u64

GEN_MAGIC = 0x6E667821


class GenPayload(ct.Structure):
    _fields_ = [("magic", u32), ("flow", u32), ("seq", u32), ("pad", u32), ("tx_ns", u64)]


class GenCfg(ct.Structure):
    _fields_ = [("nflows", u32), ("flows_per_addr", u32), ("sport_base", u16), ("l4_off", u16),
                ("frame_len", u16), ("proto", u8), ("cpus", u8), ("tx_slot", u32),
                ("tx_ifindex", u32)]


class GenTmpl(ct.Structure):
    _fields_ = [("hdr", u8 * 64)]


class SinkFlow(ct.Structure):
    _fields_ = [("received", u64), ("dup", u64), ("reordered", u64), ("distinct", u64),
                ("out_of_window", u64), ("high", u64)]


class SinkWord(ct.Structure):
    _fields_ = [("bits", u64), ("blk", u32), ("epoch", u32)]


class SinkCfg(ct.Structure):
    _fields_ = [("epoch", u32), ("nflows", u32), ("words", u32), ("pad", u32)]


LAT_SUB = 4
LAT_BUCKETS = 128

MIRRORS = {"nfx_gen_payload": GenPayload, "nfx_gen_cfg": GenCfg, "nfx_gen_tmpl": GenTmpl,
           "nfx_sink_flow": SinkFlow, "nfx_sink_word": SinkWord, "nfx_sink_cfg": SinkCfg}
