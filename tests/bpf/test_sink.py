"""nfx_sink through plain BPF_PROG_TEST_RUN: crafted generator packets in, verdicts and per-flow
sequence accounting out."""
import random
import time

import pytest

from nfx import layout as L
from nfx.loader.bpfsys import prog_test_run
from nfx.traffic.gen import build_frame
from nfx.traffic.sink import Sink, bucket_bounds, percentile, window_words

ABORTED, DROP, PASS = 0, 1, 2
NFLOWS = 4
MAC1, MAC2 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def gen_pkt(flow=0, seq=0, proto=17, size=80, tx_ns=None, payload=None):
    return build_frame(MAC1, MAC2, "10.9.0.1", "10.9.0.2", 9000, proto, size, sport=1000, flow=flow,
                       seq=seq, tx_ns=time.monotonic_ns() if tx_ns is None else tx_ns, payload=payload)


@pytest.fixture(scope="module")
def loaded():
    s = Sink(None, None, NFLOWS)
    yield s
    s.close()


@pytest.fixture
def sink(loaded):
    loaded.reset()
    return loaded


def run(sink, frame) -> int:
    verdict, _, _ = prog_test_run(sink.fn.fd, frame)
    return verdict


# (name, sequence numbers in arrival order, received, dup, reordered); the default window
# (2^21 words / 4 flows) holds every seq here, so nothing is out_of_window
SEQ_CASES = [
    ("in_order", [0, 1, 2, 3, 4], 5, 0, 0),
    ("duplicate", [0, 1, 1, 2, 0, 2], 6, 3, 0),
    ("late", [0, 2, 1, 3, 5, 4], 6, 0, 2),
    ("late_then_dup", [0, 2, 1, 1], 4, 1, 1),
    ("first_seen_not_zero", [5, 3, 4, 5], 4, 1, 2),
    ("far_behind", [0, 100, 36, 37, 100, 37], 6, 2, 2),
    # the old 64-packet window called the last 0 "reordered": it is a duplicate
    ("dup_64_behind", [0, 63, 0, 64, 0], 5, 2, 0),
    ("big_jump", [0, 1, 200, 1, 199], 5, 1, 1),
    ("dup_100k_behind", [0, 100_000, 0, 99_999, 1], 5, 1, 2),
    ("seq_max", [0, 0xFFFFFFFF, 5, 0xFFFFFFFF], 4, 1, 1),
]


def send(sink, flow, seqs):
    for s in seqs:
        assert run(sink, gen_pkt(flow=flow, seq=s)) == DROP


@pytest.mark.parametrize("name,seqs,received,dup,reordered", SEQ_CASES, ids=[c[0] for c in SEQ_CASES])
def test_sequence_accounting(sink, name, seqs, received, dup, reordered):
    flow = 2
    send(sink, flow, seqs)
    f = sink.flows()[flow]
    assert (f.received, f.dup, f.reordered, f.out_of_window) == (received, dup, reordered, 0)
    assert f.distinct == len(set(seqs)) == f.received - f.dup
    assert f.high == max(seqs) + 1
    # no other flow was touched
    assert all(x.received == 0 for i, x in enumerate(sink.flows()) if i != flow)
    st = sink.stats()
    assert st.get("v_drop") == len(seqs) and "v_aborted" not in st
    assert sink.received_total() == len(seqs)


def test_late_duplicate_beside_loss_same_flow(sink):
    """Seq 50 lost and seq 10 duplicated 190 packets later, in one flow: the old sink called
    the duplicate reordered (outside its 64-packet window) and let it fill the lost slot."""
    seqs = [s for s in range(200) if s != 50] + [10]
    send(sink, 0, seqs)
    r = sink.read([200, 0, 0, 0])
    assert (r["sent"], r["received"], r["unique"]) == (200, 200, 199)
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (1, 1, 0, 0), r
    assert r["exact"] is True and r["clean"] is False


def test_reorder_beside_loss_same_flow(sink):
    """Seq 5 lost, seq 7 arrives 100 packets late: 1 lost, 1 reordered, no duplicate."""
    seqs = [s for s in range(110) if s not in (5, 7)] + [7]
    send(sink, 1, seqs)
    r = sink.read([0, 110, 0, 0])
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (1, 0, 1, 0), r
    assert r["exact"] is True and r["clean"] is False


def test_unexpected_seq_beside_loss_same_flow(sink):
    """Seq 3 lost and seq 12 (never sent: 10 were) arrives: 1 lost and 1 unexpected, where
    the old count (unique == sent) showed neither."""
    send(sink, 3, [0, 1, 2, 4, 5, 6, 7, 8, 9, 12, 12])
    r = sink.read([0, 0, 0, 10])
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (1, 1, 0, 1), r
    assert r["clean"] is False


def test_bad_flow_is_unexpected(sink):
    send(sink, 0, range(5))
    assert run(sink, gen_pkt(flow=NFLOWS, seq=0)) == DROP
    r = sink.read([5, 0, 0, 0])
    assert (r["lost"], r["unexpected"], r["bad_flow"]) == (0, 1, 1), r
    assert r["exact"] is True and r["clean"] is False


def test_clean_run(sink):
    for f in range(NFLOWS):
        send(sink, f, range(f * 70))
    r = sink.read([f * 70 for f in range(NFLOWS)])
    assert r["received"] == r["sent"] == 420 and r["clean"] is True and r["exact"] is True


def test_clean_run_has_no_bad_bytes(sink):
    for size in (66, 80, 1500):
        assert run(sink, gen_pkt(seq=size, size=size)) == DROP
    r = sink.read([1501, 0, 0, 0])
    assert (r["bad_len"], r["bad_payload"]) == (0, 0)


def test_a_leaked_trailer_is_bad_and_the_run_not_clean(sink):
    """A frame longer than its datagram (e.g. the stamper's trailer an NF let through) is counted
    and judged as usual, and makes the run not clean."""
    import struct
    send(sink, 0, [0, 1])
    assert run(sink, gen_pkt(seq=2) + struct.pack(">II", L.STAMP_MAGIC, 3)) == DROP
    r = sink.read([3, 0, 0, 0])
    assert (r["received"], r["lost"], r["bad_len"], r["bad_payload"]) == (3, 0, 1, 0)
    assert r["exact"] is True and r["clean"] is False


@pytest.mark.parametrize("what", ["tail", "pad"])
def test_a_payload_not_the_generators_is_bad(sink, what):
    pl = bytes(L.GenPayload(magic=L.GEN_MAGIC, flow=1, seq=0, pad=1 if what == "pad" else 0))
    if what == "tail":
        pl += bytes(20) + b"x"                     # the last byte of the datagram
    assert run(sink, gen_pkt(flow=1, payload=pl, size=14 + 28 + len(pl))) == DROP
    r = sink.read([0, 1, 0, 0])
    assert (r["bad_payload"], r["bad_len"], r["clean"]) == (1, 0, False)


def test_reset_forgets_the_bitmap(sink):
    send(sink, 0, range(70))
    sink.reset()
    send(sink, 0, range(70))
    r = sink.read([70, 0, 0, 0])
    assert (r["received"], r["duplicated"], r["lost"], r["clean"]) == (70, 0, 0, True), r


@pytest.fixture(scope="module")
def small_loaded():
    s = Sink(None, None, 2, window=100)                # rounds up to 2 words: 128 seqs
    yield s
    s.close()


@pytest.fixture
def small(small_loaded):
    small_loaded.reset()
    return small_loaded


def test_window_rounding():
    assert [window_words(1, w) * 64 for w in (1, 64, 65, 128, 129, 1000)] == [64, 64, 128, 128, 256, 1024]
    assert window_words(1000) == 2048 and window_words(4) == 1 << 19 and window_words(10**7) == 1


def test_flow_counts_of_one_size_class_share_one_program():
    """The arrays are capacities (loader.compile.size_class) and the flow count and window are
    the sink's settings: sinks of 5 and 60 flows run one compiled program of 64 flows, and each
    judges exactly its own flows (flow 5 of the first is a bad flow, as flow 60 of the second)."""
    from nfx.loader import bpfsys
    from nfx.loader.compile import size_class
    assert [size_class(n) for n in (1, 5, 64, 65, 1000, 10_000)] == [64, 64, 64, 128, 1024, 16384]
    a, b = Sink(None, None, 5), Sink(None, None, 60)
    try:
        for s, n in ((a, 5), (b, 60)):
            assert bpfsys.map_info(s.maps.sink_flows.fd).max_entries == 64
            assert len(s.flows()) == n and s.window == window_words(n) * 64
            send(s, n - 1, [0, 2, 1])
            assert run(s, gen_pkt(flow=n, seq=0)) == DROP
            r = s.read([0] * (n - 1) + [3])
            assert (r["lost"], r["reordered"], r["bad_flow"], r["unexpected"]) == (0, 1, 1, 1), r
    finally:
        a.close()
        b.close()


def test_out_of_window_counted_not_guessed(small):
    """With a 128-seq window, seq 300 takes over the word of seqs 0-63: a late 0 (a dup) and a
    late 1 (new) can no longer be told apart, so both are out_of_window and the run not exact;
    seq 70 keeps its own word and is judged."""
    assert small.window == 128
    send(small, 0, [0, 2, 70, 300, 0, 1, 70, 71])
    f = small.flows()[0]
    assert (f.received, f.distinct, f.dup, f.reordered, f.out_of_window) == (8, 5, 1, 1, 2)
    r = small.read([301, 0])
    assert r["out_of_window"] == 2 and r["exact"] is False and r["clean"] is False


def test_run_fitting_the_window_is_exact(small):
    """A flow's whole run fits 128 seqs: any order, any lateness, judged exactly."""
    seqs = list(range(128))
    random.Random(3).shuffle(seqs)
    seqs = [s for s in seqs if s != 17] + [seqs[0], 127]
    send(small, 1, seqs)
    r = small.read([0, 128])
    assert (r["lost"], r["duplicated"], r["out_of_window"], r["exact"]) == (1, 2, 0, True), r


def test_unexpected_beyond_the_window_not_exact(small):
    """Seqs 10 and 1000 were never sent (10 were); 1000 is 15 blocks on, wider than the
    window, so the unexpected count cannot be proven complete."""
    send(small, 0, list(range(10)) + [10, 1000])
    r = small.read([10, 0])
    assert r["unexpected"] >= 1 and r["exact"] is False and r["clean"] is False


def test_tcp_generator_packets_counted(sink):
    for s in range(3):
        assert run(sink, gen_pkt(flow=1, seq=s, proto=6, size=100)) == DROP
    assert sink.flows()[1].received == 3


def test_tcp_options_and_ip_options_still_found(sink):
    from scapy.all import IP, TCP, UDP, Ether, Raw, raw
    pl = bytes(L.GenPayload(magic=L.GEN_MAGIC, flow=3, seq=0, tx_ns=time.monotonic_ns()))
    tcp_opts = raw(Ether(dst="02:00:00:00:00:02") / IP(src="10.9.0.1", dst="10.9.0.2") /
                   TCP(options=[("MSS", 1460), ("NOP", None), ("NOP", None)]) / Raw(pl))
    pl1 = bytes(L.GenPayload(magic=L.GEN_MAGIC, flow=3, seq=1, tx_ns=time.monotonic_ns()))
    ip_opts = raw(Ether(dst="02:00:00:00:00:02") / IP(src="10.9.0.1", dst="10.9.0.2", options=b"\x01\x01\x01\x00") /
                  UDP() / Raw(pl1))
    assert run(sink, tcp_opts) == DROP
    assert run(sink, ip_opts) == DROP
    f = sink.flows()[3]
    assert (f.received, f.dup, f.reordered) == (2, 0, 0)


def test_read_computes_loss(sink):
    for s in (0, 1, 2, 5, 5):
        run(sink, gen_pkt(flow=0, seq=s))
    run(sink, gen_pkt(flow=1, seq=0))
    r = sink.read([10, 1, 0, 0])
    assert r["received"] == 6 and r["duplicated"] == 1 and r["unique"] == 5
    assert r["sent"] == 11 and r["lost"] == 6 and r["unexpected"] == 0
    r = sink.read([0, 1, 0, 0])                       # fewer sent than seen: never negative loss
    assert r["lost"] == 0 and r["unexpected"] == 4
    r = sink.read([3, 1, 0, 0])                       # 0-2 sent and seen; 5 never sent
    assert r["lost"] == 0 and r["unexpected"] == 1


def test_latency_histogram(sink):
    import struct
    frames = [bytearray(gen_pkt(flow=0, seq=i)) for i in range(10)]
    for f in frames:                                 # stamp just before sending: ~2 ms old
        f[58:66] = struct.pack("<Q", time.monotonic_ns() - 2_000_000)
        run(sink, bytes(f))
    run(sink, gen_pkt(flow=1, seq=0, tx_ns=time.monotonic_ns() + 10**12))   # from the future: 0
    hist = sink.histogram()
    assert sum(hist) == 11 and hist[0] == 1
    r = sink.read()
    assert 1500 < r["lat_p50_us"] < 3000
    assert 2000 <= r["lat_max_us"] < 1_000_000


def test_bucket_layout_covers_every_value():
    prev_hi = 0
    for i in range(L.LAT_BUCKETS):
        lo, hi = bucket_bounds(i)
        assert lo == prev_hi and hi > lo
        prev_hi = hi
    assert prev_hi == 1 << 33
    assert percentile([0] * L.LAT_BUCKETS, 0.5) is None


def _foreign_frames():
    from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPv6, Raw, raw
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    ip = IP(src="10.9.0.1", dst="10.9.0.2")
    good = bytes(L.GenPayload(magic=L.GEN_MAGIC, flow=0, seq=0))
    bad_magic = bytes(L.GenPayload(magic=L.GEN_MAGIC ^ 1, flow=0, seq=0))
    return {
        "udp_no_magic": raw(eth / ip / UDP() / Raw(bad_magic)),
        "udp_short_payload": raw(eth / ip / UDP() / Raw(good[:20])),
        "tcp_syn": raw(eth / ip / TCP(flags="S")),
        "icmp_echo_with_magic": raw(eth / ip / ICMP() / Raw(good)),
        "arp": raw(eth / ARP(pdst="10.9.0.2", hwdst="00:00:00:00:00:00")),
        "ipv6_udp": raw(eth / IPv6() / UDP() / Raw(good)),
        "fragment_with_magic": raw(eth / IP(src="10.9.0.1", dst="10.9.0.2", flags="MF") / UDP() / Raw(good)),
        "not_ip": raw(Ether(dst="02:00:00:00:00:02", type=0x1234) / Raw(good)),
    }


@pytest.mark.parametrize("name", list(_foreign_frames()))
def test_foreign_packets_pass(sink, name):
    assert run(sink, _foreign_frames()[name]) == PASS
    st = sink.stats()
    assert st.get("r_sink_foreign") == 1 and st.get("v_pass") == 1
    assert sink.read()["received"] == 0


def test_bad_flow_dropped_and_counted(sink):
    assert run(sink, gen_pkt(flow=NFLOWS, seq=0)) == DROP
    assert run(sink, gen_pkt(flow=0xFFFFFFFF, seq=0)) == DROP
    assert sink.stats().get("r_sink_bad_flow") == 2
    assert sink.read()["received"] == 0


def test_truncated_never_aborted(sink):
    frame = gen_pkt(flow=0, seq=0, size=80)
    for n in range(14, len(frame) + 1):            # test runs need at least an Ethernet header
        v = run(sink, frame[:n])
        # a cut frame holds less than its IPv4 total length: malformed, not a generator packet
        assert v == (PASS if n < len(frame) else DROP), n
    assert sink.stats().get("r_bad_tot_len", 0) > 0


def test_garbage_never_aborted(sink):
    rnd = random.Random(7)
    base = bytearray(gen_pkt(flow=1, seq=0))
    for i in range(400):
        f = bytearray(base)
        for _ in range(rnd.randint(1, 8)):
            f[rnd.randrange(len(f))] = rnd.randrange(256)
        f = f[:rnd.randint(14, len(f))]
        assert run(sink, bytes(f)) in (PASS, DROP)
        assert run(sink, bytes(rnd.randrange(256) for _ in range(rnd.randint(14, 120)))) in (PASS, DROP)
    assert "v_aborted" not in sink.stats()
