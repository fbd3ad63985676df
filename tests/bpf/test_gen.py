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
                  dport=7000, proto=proto, size=size, nflows=nflows, sport_base=2000, flows_per_addr=fpa,
                  transport="live")
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
    g = Generator(None, None, None, src_mac=MAC1, dst_mac=MAC2, src_ip="10.1.0.10", dst_ip="10.2.0.1",
                  transport="live")
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


def tc_generator(s):
    """A generator of the tc transport sending out of tx0 (its peer rx0 takes what comes)."""
    ns = s.ns("n")
    s.veth("tx0", ns, "rx0", ns)
    g = Generator(ns, "tx0", "tx0", dst_mac=MAC2, src_ip="10.1.0.10", dst_ip="10.2.0.1", dport=7000,
                  nflows=10, sport_base=2000, flows_per_addr=3, transport="tc")
    return ns, g


def rx_packets(ns: str, ifname: str) -> int:
    from nfx.loader import netlink
    with netlink.Netlink(ns) as nl:
        [link] = nl.ipr.get_links(nl.index(ifname))
        return link.get_attr("IFLA_STATS64")["rx_packets"]


def test_tc_transport_sends_valid_frames_out_of_its_interface():
    """nfx_gen_tc (nfx/loader/transmit.py's tc transport): each skb test run writes the same
    valid packets nfx_gen writes, and a clone of each leaves through tx0 (rx0 counts them)."""
    from nfx.loader import netns
    from nfx.loader.bpfsys import prog_test_run_skb
    from tests.scratch import Scratch
    s = Scratch("tgt")
    g = None
    try:
        ns, g = tc_generator(s)
        before = rx_packets(ns, "rx0")
        with netns.enter(ns):
            for i in range(25):
                t0 = time.monotonic_ns()
                verdict, out, _ = prog_test_run_skb(g.fn.fd, g.frame)
                t1 = time.monotonic_ns()
                assert verdict == 2                      # TC_ACT_SHOT: the clone went, not the original
                check_frame(out, "udp", g.size, i % 10, i // 10, t0, t1)
        assert g.per_flow_total() == [3] * 5 + [2] * 5
        assert g.stats() == {"r_gen_sent": 25, "v_drop": 25}
        r = g.run(None, 0.05)                            # the Generator's own calls, repeated runs
        assert r["sent"] > 0 and g.stats()["r_gen_sent"] == 25 + r["sent"]
        deadline = time.monotonic() + 2
        while rx_packets(ns, "rx0") - before < 25 + r["sent"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rx_packets(ns, "rx0") - before == 25 + r["sent"]
    finally:
        if g is not None:
            g.close()
        s.close()


def test_tc_transport_gives_a_packet_it_could_not_send_its_number_back():
    from nfx.loader import netlink, netns
    from nfx.loader.bpfsys import prog_test_run_skb
    from tests.scratch import Scratch
    s = Scratch("tgf")
    g = None
    try:
        ns, g = tc_generator(s)
        with netlink.Netlink(ns) as nl:
            nl.ipr.link("set", index=nl.index("tx0"), state="down")   # the clone's xmit fails: ENETDOWN
        with netns.enter(ns):
            verdict, _, _ = prog_test_run_skb(g.fn.fd, g.frame)
        assert verdict == 2
        assert g.stats() == {"r_gen_tx_fail": 1, "v_drop": 1}
        assert g.per_flow_total() == [0] * 10                 # flow 0's packet 0 goes next
    finally:
        if g is not None:
            g.close()
        s.close()
