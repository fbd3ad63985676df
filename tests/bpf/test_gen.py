"""nfx_gen through plain BPF_PROG_TEST_RUN: the output frame of every run is a valid packet
(checksums recomputed by scapy) of the expected flow, source, sequence and size."""
import time

import pytest

from nfx import layout as L
from nfx.loader.bpfsys import prog_test_run
from nfx.traffic.gen import Generator

REDIRECT = 4
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def make(proto="udp", size=None, nflows=10, fpa=3):
    g = Generator(None, None, None, src_mac=MAC1, dst_mac=MAC2, src_ip="10.1.0.10", dst_ip="10.2.0.1",
                  dport=7000, proto=proto, size=size, nflows=nflows, sport_base=2000, flows_per_addr=fpa)
    g.maps["gen_tx"].put(L.u32(0), L.u32(1))       # lo: any existing device makes the redirect resolve
    return g


def check_frame(out, proto, size, flow, seq, t0, t1):
    from scapy.all import IP, TCP, UDP, Ether
    assert len(out) == size
    p = Ether(out)
    ref = p.copy()
    l4 = UDP if proto == "udp" else TCP
    del ref[IP].chksum, ref[l4].chksum
    ref = Ether(bytes(ref))
    assert p[IP].chksum == ref[IP].chksum, "IP checksum"
    assert p[l4].chksum == ref[l4].chksum, f"{proto} checksum"
    assert p[IP].src == f"10.1.0.{10 + flow // 3}" and p[IP].dst == "10.2.0.1"
    assert p[l4].sport == 2000 + flow % 3 and p[l4].dport == 7000
    assert p[IP].len == size - 14
    if proto == "tcp":
        assert p[TCP].flags == "PA"
    pl = L.GenPayload.from_buffer_copy(bytes(p[l4].payload)[:24])
    assert (pl.magic, pl.flow, pl.seq, pl.pad) == (L.GEN_MAGIC, flow, seq, 0)
    assert t0 <= pl.tx_ns <= t1


@pytest.mark.parametrize("proto,size", [("udp", None), ("udp", 128), ("udp", 1514), ("tcp", None), ("tcp", 1000)])
def test_generated_frames_valid(proto, size):
    g = make(proto, size)
    try:
        n = 25
        for i in range(n):
            t0 = time.monotonic_ns()
            verdict, out, _ = prog_test_run(g.fn.fd, g.frame)
            t1 = time.monotonic_ns()
            assert verdict == REDIRECT
            check_frame(out, proto, g.size, i % 10, i // 10, t0, t1)
        assert g.per_flow_total() == [3] * 5 + [2] * 5
        assert g.stats() == {"r_gen_sent": n, "v_redirect": n}
        g.reset()
        assert g.per_flow_total() == [0] * 10
    finally:
        g.close()


def test_recycled_page_is_rewritten():
    """Live pages come back with whatever the path left in them: start from a frame whose
    header is garbage and expect the same valid packet."""
    g = make()
    try:
        junk = bytes([0xA5]) * 42 + g.frame[42:]
        t0 = time.monotonic_ns()
        verdict, out, _ = prog_test_run(g.fn.fd, junk)
        assert verdict == REDIRECT
        check_frame(out, "udp", g.size, 0, 0, t0, time.monotonic_ns())
    finally:
        g.close()


def test_frame_length_adjusted_to_config():
    g = make(size=128)
    try:
        longer = g.frame + bytes(100)
        verdict, out, _ = prog_test_run(g.fn.fd, longer)
        assert verdict == REDIRECT and len(out) == 128
    finally:
        g.close()


def test_unset_tx_slot_aborts_cleanly():
    g = Generator(None, None, None, src_mac=MAC1, dst_mac=MAC2, src_ip="10.1.0.10", dst_ip="10.2.0.1")
    try:
        verdict, _, _ = prog_test_run(g.fn.fd, g.frame)
        assert verdict == 0                         # redirect_map's fallback: XDP_ABORTED, counted
        assert g.stats().get("v_aborted") == 1
    finally:
        g.close()


def test_bad_parameters_refused():
    from nfx.errors import BadInput
    with pytest.raises(BadInput):
        Generator(None, None, None, src_mac=MAC1, dst_mac=MAC2, src_ip="10.1.0.1", dst_ip="10.2.0.1", size=60)
    with pytest.raises(BadInput):
        Generator(None, None, None, src_mac=MAC1, dst_mac=MAC2, src_ip="10.1.0.1", dst_ip="10.2.0.1",
                  nflows=100, sport_base=65500, flows_per_addr=100)
    with pytest.raises(BadInput):
        Generator(None, None, None, src_mac=MAC1, dst_mac=MAC2, src_ip="10.1.0.1", dst_ip="10.2.0.1",
                  proto="sctp")
