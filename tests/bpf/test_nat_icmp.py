"""NAT and ICMP errors (RFC 5508) through BPF_PROG_TEST_RUN: an error about a mapped packet is
translated both ways, with every checksum right as scapy computes it; errors never make,
refresh or end a mapping."""
import pytest
from scapy.all import Ether, ICMP, IP, Raw, TCP, UDP, raw
from scapy.utils import checksum

from tests.bpf.test_nat import H1, H2, XDP_DROP, XDP_REDIRECT, eth, fresh, nat, run, stat  # noqa: F401

ROUTER = "10.0.2.1"          # an outside router on the path to H2


def ip_bytes(o: Ether) -> bytes:
    """The IPv4 datagram of an output frame, without Ethernet padding."""
    b = raw(o)[14:]
    return b[:int.from_bytes(b[2:4], "big")]


def assert_checksums(o: Ether):
    """Outer IP and ICMP checksums, and the quoted IP header's, as scapy's checksum() sees them."""
    d = ip_bytes(o)
    ihl = (d[0] & 15) * 4
    assert checksum(d[:ihl]) == 0, "outer IP checksum"
    icmp = d[ihl:]
    assert checksum(icmp) == 0, "ICMP checksum"
    q = icmp[8:]
    assert checksum(q[:(q[0] & 15) * 4]) == 0, "quoted IP checksum"


def quoted(o: Ether) -> bytes:
    d = ip_bytes(o)
    return d[(d[0] & 15) * 4 + 8:]


def go_out(nat, pkt):
    """Send an inside packet out; returns what left (the packet a router would quote)."""
    v, o = run(nat, pkt)
    assert v == XDP_REDIRECT
    return o[IP]


def mapping_snapshot(nat):
    return sorted((m["sport"], m["pkts_out"], m["pkts_in"], m["idle_s"] >= 0) for m in nat.mappings())


def fwd_values(nat):
    n, keys, vals = nat.maps["nat_fwd"].export()
    return sorted((bytes(keys[i]), bytes(vals[i])) for i in range(n))


@pytest.mark.parametrize("code,extra", [(4, {"nexthopmtu": 1200}), (1, {}), (3, {})],
                         ids=["frag-needed", "host-unreachable", "port-unreachable"])
def test_dest_unreachable_for_udp_reaches_the_inside_host(nat, code, extra):
    orig = IP(src=H1, dst=H2, flags="DF") / UDP(sport=5000, dport=53) / Raw(b"q" * 40)
    sent = go_out(nat, eth() / orig)
    before = fwd_values(nat)
    err = eth() / IP(src=ROUTER, dst=sent.src) / ICMP(type=3, code=code, **extra) / Raw(raw(sent))
    v, o = run(nat, err, "out")
    assert v == XDP_REDIRECT
    assert (o[IP].src, o[IP].dst) == (ROUTER, H1)
    assert (o[ICMP].type, o[ICMP].code) == (3, code)
    if code == 4:
        assert o[ICMP].nexthopmtu == 1200
    # the quoted packet is again the one H1 sent, byte for byte (checksums included)
    assert quoted(o) == raw(orig)
    assert_checksums(o)
    assert stat(nat, "r_nat_icmp_err") == 1
    assert fwd_values(nat) == before                 # the mapping was only read


def test_time_exceeded_for_icmp_echo(nat):
    orig = IP(src=H1, dst=H2, ttl=1) / ICMP(type=8, id=777, seq=3) / Raw(b"ping" * 4)
    sent = go_out(nat, eth() / orig)
    assert sent[ICMP].id != 777
    err = eth() / IP(src=ROUTER, dst=sent.src) / ICMP(type=11, code=0) / Raw(raw(sent))
    v, o = run(nat, err, "out")
    assert v == XDP_REDIRECT and o[IP].dst == H1
    assert quoted(o) == raw(orig)
    assert_checksums(o)


@pytest.mark.parametrize("cut", [8, 18, None], ids=["tcp-8-bytes", "tcp-18-bytes", "tcp-whole"])
def test_tcp_quote_of_any_length(nat, cut):
    """RFC 792 routers quote 8 bytes of TCP (no checksum in them); Linux quotes what fits."""
    orig = IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags="PA", seq=99) / Raw(b"GET / HTTP/1.0\r\n\r\n")
    sent = go_out(nat, eth() / orig)
    q = raw(sent) if cut is None else raw(sent)[:20 + cut]
    err = eth() / IP(src=ROUTER, dst=sent.src) / ICMP(type=3, code=4, nexthopmtu=576) / Raw(q)
    v, o = run(nat, err, "out")
    assert v == XDP_REDIRECT and o[IP].dst == H1
    want = raw(orig) if cut is None else raw(orig)[:20 + cut]
    assert quoted(o) == want
    assert_checksums(o)


def test_udp_quote_without_checksum_stays_without(nat):
    orig = IP(src=H1, dst=H2) / UDP(sport=5001, dport=53, chksum=0) / Raw(b"z" * 8)
    sent = go_out(nat, eth() / orig)
    err = eth() / IP(src=ROUTER, dst=sent.src) / ICMP(type=3, code=1) / Raw(raw(sent))
    v, o = run(nat, err, "out")
    assert v == XDP_REDIRECT and quoted(o) == raw(orig)
    assert_checksums(o)


def test_parameter_problem_with_ip_options_in_the_quote(nat):
    orig = IP(src=H1, dst=H2, options=b"\x01\x01\x01\x00") / UDP(sport=5002, dport=53) / Raw(b"o" * 12)
    sent = go_out(nat, eth() / orig)
    err = eth() / IP(src=ROUTER, dst=sent.src) / ICMP(type=12, code=0, ptr=20) / Raw(raw(sent))
    v, o = run(nat, err, "out")
    assert v == XDP_REDIRECT and quoted(o) == raw(orig)
    assert_checksums(o)


def test_inside_host_answers_port_unreachable(nat):
    """Outbound: H1 answers a translated packet with port-unreachable; it leaves as if the public
    address had answered, quoting the packet H2 sent."""
    sent = go_out(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=5003, dport=53) / Raw(b"q"))
    remote = IP(src=H2, dst=sent.src) / UDP(sport=53, dport=sent[UDP].sport) / Raw(b"answer")
    v, inside = run(nat, eth() / remote, "out")
    assert v == XDP_REDIRECT and (inside[IP].dst, inside[UDP].dport) == (H1, 5003)
    before = fwd_values(nat)
    err = eth() / IP(src=H1, dst=H2) / ICMP(type=3, code=3) / Raw(raw(inside[IP]))
    v, o = run(nat, err, "in")
    assert v == XDP_REDIRECT
    assert (o[IP].src, o[IP].dst) == (sent.src, H2)
    assert quoted(o) == raw(remote)
    assert_checksums(o)
    assert fwd_values(nat) == before


def test_errors_without_a_mapping_are_dropped_and_make_none(nat):
    # from outside, about a tuple the NAT never handed out
    ghost = IP(src="10.0.2.100", dst=H2) / UDP(sport=20555, dport=53) / Raw(b"g")
    v, _ = run(nat, eth() / IP(src=ROUTER, dst="10.0.2.100") / ICMP(type=3, code=4) / Raw(raw(ghost)), "out")
    assert v == XDP_DROP and stat(nat, "r_nat_no_mapping") == 1
    # from inside, about a packet that never came through the NAT
    stray = IP(src=H2, dst=H1) / UDP(sport=53, dport=6000) / Raw(b"s")
    v, _ = run(nat, eth() / IP(src=H1, dst=H2) / ICMP(type=3, code=3) / Raw(raw(stray)), "in")
    assert v == XDP_DROP and stat(nat, "r_nat_no_mapping") == 2
    for m in ("nat_fwd", "nat_rev", "nat_ports", "nat_hosts"):
        assert len(nat.maps[m]) == 0


def test_error_not_addressed_to_the_quoted_source_is_dropped(nat):
    sent = go_out(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=5004, dport=53) / Raw(b"q"))
    other = "10.0.2.101" if sent.src == "10.0.2.100" else "10.0.2.100"
    v, _ = run(nat, eth() / IP(src=ROUTER, dst=other) / ICMP(type=3, code=1) / Raw(raw(sent)), "out")
    assert v == XDP_DROP and stat(nat, "r_nat_no_mapping") == 1


@pytest.mark.parametrize("quote", [
    b"",                                                             # nothing quoted
    raw(IP(src="10.0.2.100", dst=H2) / UDP(sport=20000, dport=53))[:24],   # 4 bytes of L4
    raw(IP(src="10.0.2.100", dst=H2, frag=8) / Raw(b"x" * 16)),       # a later fragment
    raw(IP(src="10.0.2.100", dst=H2, proto=47) / Raw(b"x" * 16)),     # GRE
    b"\x65" + raw(IP(src="10.0.2.100", dst=H2) / UDP())[1:],          # version 6
    raw(IP(src="10.0.2.100", dst=H2) / ICMP(type=0) / Raw(b"x" * 8)), # echo reply: never mapped
], ids=["empty", "short-l4", "fragment", "gre", "version", "echo-reply"])
def test_unreadable_quote_dropped_and_counted(nat, quote):
    v, _ = run(nat, eth() / IP(src=ROUTER, dst="10.0.2.100") / ICMP(type=3, code=1) / Raw(quote), "out")
    assert v == XDP_DROP and stat(nat, "r_nat_icmp_bad") == 1
    assert len(nat.maps["nat_fwd"]) == 0


def test_quote_past_the_outer_total_length_is_not_read(nat):
    """Bytes after the outer datagram (Ethernet padding) are not part of the quote."""
    sent = go_out(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=5005, dport=53) / Raw(b"q"))
    q = raw(sent)[:24]                     # 4 bytes of UDP inside the datagram...
    err = IP(src=ROUTER, dst=sent.src) / ICMP(type=3, code=1) / Raw(q)
    frame = raw(eth() / err) + raw(sent)[24:]   # ...and the rest of the UDP header as padding
    v, _ = run(nat, Raw(frame), "out")
    assert v == XDP_DROP and stat(nat, "r_nat_icmp_bad") == 1
