"""The echo build of nfx_sink through plain BPF_PROG_TEST_RUN: a generator frame in, the frame
reflected out (MACs, IPv4 addresses and L4 ports swapped, payload as it was, checksums valid as
scapy computes them), the packet counted like any other, and the XDP_TX verdict counted."""
import time

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw

from nfx import layout as L
from nfx.loader.bpfsys import prog_test_run
from nfx.traffic.gen import build_frame
from nfx.traffic.sink import Sink

DROP, PASS, TX = 1, 2, 3
NFLOWS = 4
MAC1, MAC2 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
A1, A2 = "10.9.0.1", "10.9.0.2"


def gen_pkt(flow=0, seq=0, proto=17, size=80, sport=1000):
    return build_frame(MAC1, MAC2, A1, A2, 9000, proto, size, sport=sport, flow=flow, seq=seq,
                       tx_ns=time.monotonic_ns())


@pytest.fixture(scope="module")
def loaded():
    s = Sink(None, None, NFLOWS, echo=True)
    yield s
    s.close()


@pytest.fixture
def echo(loaded):
    loaded.reset()
    return loaded


def recomputed(frame: bytes) -> bytes:
    """The frame with scapy's own IPv4 and L4 checksums in place of the frame's."""
    p = Ether(frame)
    del p[IP].chksum
    l4 = p[UDP] if UDP in p else p[TCP]
    del l4.chksum
    return raw(p)


@pytest.mark.parametrize("proto,size", [(17, 80), (17, 66), (6, 200)], ids=["udp", "udp-min", "tcp"])
def test_reflects_with_valid_checksums(echo, proto, size):
    frame = gen_pkt(flow=2, seq=7, proto=proto, size=size, sport=1234)
    verdict, out, _ = prog_test_run(echo.fn.fd, frame)
    assert verdict == TX
    assert len(out) == len(frame)
    p, q = Ether(frame), Ether(out)
    assert (q.src, q.dst) == (p.dst, p.src)
    assert (q[IP].src, q[IP].dst) == (A2, A1)
    L4 = UDP if proto == 17 else TCP
    assert (q[L4].sport, q[L4].dport) == (9000, 1234)
    assert bytes(q[L4].payload) == bytes(p[L4].payload)          # nfx_gen_payload and padding kept
    assert out == recomputed(out), "IPv4 or L4 checksum of the reflected frame is wrong"
    # everything else is the input's: TTL, id, flags, TOS, TCP seq/ack/flags
    swapped = p.copy()
    swapped.src, swapped.dst = p.dst, p.src
    swapped[IP].src, swapped[IP].dst = A2, A1
    swapped[L4].sport, swapped[L4].dport = 9000, 1234
    assert out == raw(swapped)
    f = echo.flows()[2]
    assert (f.received, f.distinct, f.high) == (1, 1, 8)
    st = echo.stats()
    assert st.get("v_tx") == 1 and st.get("r_sink_rx") == 1 and "v_drop" not in st
    assert echo.echoed_total() == 1 and echo.read()["echoed"] == 1


def test_udp_without_checksum_stays_without(echo):
    """UDP checksum 0 (none) must not become a wrong nonzero one."""
    p = Ether(gen_pkt(flow=1))
    p[UDP].chksum = 0
    verdict, out, _ = prog_test_run(echo.fn.fd, raw(p))
    assert verdict == TX
    q = Ether(out)
    assert q[UDP].chksum == 0 and q[IP].chksum == Ether(recomputed(out))[IP].chksum


def test_only_counted_packets_are_echoed(echo):
    """A foreign packet passes untouched, an unknown flow is dropped: neither is reflected."""
    foreign = build_frame(MAC1, MAC2, A1, A2, 9000, 17, 80, sport=1000,
                          payload=bytes(L.GenPayload(magic=0x12345678)))
    verdict, out, _ = prog_test_run(echo.fn.fd, foreign)
    assert verdict == PASS and out == foreign
    verdict, _, _ = prog_test_run(echo.fn.fd, gen_pkt(flow=NFLOWS))
    assert verdict == DROP
    st = echo.stats()
    assert "v_tx" not in st and st.get("r_sink_foreign") == 1 and st.get("r_sink_bad_flow") == 1
    assert echo.echoed_total() == 0


def test_seq_accounting_is_the_plain_sinks(echo):
    """Echoing changes only the verdict: duplicates and reordering are judged as before."""
    for s in (0, 2, 1, 1, 3):
        assert prog_test_run(echo.fn.fd, gen_pkt(flow=0, seq=s))[0] == TX
    f = echo.flows()[0]
    assert (f.received, f.dup, f.reordered, f.distinct) == (5, 1, 1, 4)
    assert echo.echoed_total() == 5


def test_plain_sink_still_drops_and_has_no_echo_figure():
    s = Sink(None, None, 1)
    try:
        verdict, _, _ = prog_test_run(s.fn.fd, gen_pkt())
        assert verdict == DROP
        assert "echoed" not in s.read() and "v_tx" not in s.stats()
    finally:
        s.close()


def test_echo_and_pass_gen_exclude_each_other():
    with pytest.raises(Exception, match="passes generator packets to the stack, echoes them or sends them round"):
        Sink(None, None, 1, pass_gen=True, echo=True)
