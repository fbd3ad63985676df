"""The loop builds (nfx/traffic/loop.py) through plain BPF_PROG_TEST_RUN: the sink counts a
generator packet and redirects it into its loop slot instead of dropping it, and times nothing;
anything else still goes to the stack. The loop's generator writes tx_ns 0 with valid checksums."""
import ctypes as ct
import time

import pytest

from nfx import layout as L
from nfx.loader.bpfsys import prog_test_run
from nfx.loader.compile import compile_source, load
from nfx.traffic.gen import GEN_MAPS, build_frame, gen_defines
from nfx.traffic.sink import Sink

PASS, REDIRECT = 2, 4
MAC1, MAC2 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


@pytest.fixture(scope="module")
def sink():
    s = Sink(None, None, 4, loop_if="lo")        # lo: any device of this netns makes the slot resolve
    yield s
    s.close()


def test_loop_sink_counts_and_redirects(sink):
    sink.reset()
    for seq in range(3):
        frame = build_frame(MAC1, MAC2, "10.9.0.1", "10.9.0.2", 9000, 17, 80, sport=1000, flow=1, seq=seq,
                            tx_ns=time.monotonic_ns())
        verdict, _, _ = prog_test_run(sink.fn.fd, frame)
        assert verdict == REDIRECT
    assert sink.maps.sink_loop.get(L.u32(0)).value == 1
    f = sink.flows()[1]
    assert (f.received, f.distinct, f.high, f.dup, f.reordered) == (3, 3, 3, 0, 0)
    st = sink.stats()
    assert st.get("v_redirect") == 3 and st.get("r_sink_rx") == 3 and "v_drop" not in st
    assert sum(sink.histogram()) == 0, "a loop's sink times nothing"


def test_loop_sink_passes_foreign(sink):
    sink.reset()
    from scapy.all import IP, UDP, Ether, raw
    verdict, _, _ = prog_test_run(sink.fn.fd, raw(Ether() / IP(dst="10.9.0.2") / UDP(dport=53) / (b"x" * 40)))
    assert verdict == PASS and sink.stats().get("r_sink_foreign") == 1


def test_untimed_generator_writes_no_clock():
    from scapy.all import IP, UDP, Ether
    frame = build_frame(MAC1, MAC2, "10.1.0.10", "10.2.0.1", 7000, 17, 80, sport=2000)
    b = compile_source("gen", gen_defines(2, timed=False))
    try:
        fn = load(b, "nfx_gen", "xdp")
        maps = GEN_MAPS.from_bcc(b)
        tmpl = L.GenTmpl()
        ct.memmove(tmpl.hdr, frame[:ct.sizeof(tmpl)], ct.sizeof(tmpl))
        maps.gen_tmpl.put(L.u32(0), tmpl)
        maps.gen_cfg.put(L.u32(0), L.GenCfg(nflows=2, flows_per_addr=2, sport_base=2000, l4_off=34, frame_len=80,
                                            proto=17, cpus=1))
        maps.gen_tx.put(L.u32(0), L.u32(1))
        for i in range(4):
            verdict, out, _ = prog_test_run(fn.fd, frame)
            assert verdict == REDIRECT
            p = Ether(out)
            pl = L.GenPayload.from_buffer_copy(bytes(p[UDP].payload)[:24])
            assert (pl.flow, pl.seq, pl.tx_ns) == (i % 2, i // 2, 0)
            assert p[UDP].sport == 2000 + i % 2
            ref = p.copy()
            del ref[IP].chksum, ref[UDP].chksum
            ref = Ether(bytes(ref))
            assert (p[IP].chksum, p[UDP].chksum) == (ref[IP].chksum, ref[UDP].chksum)
    finally:
        b.cleanup()
