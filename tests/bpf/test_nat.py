"""NAT verdicts and output bytes through BPF_PROG_TEST_RUN, checked against scapy."""
import time

import pytest
from scapy.all import ARP, Dot1Q, Ether, ICMP, IP, IPv6, Raw, TCP, UDP, raw

from nfx import layout as L
from nfx.flows import ip_to_be, make_key
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from nfx.nfs.base import Wiring
from nfx.nfs.nat import NAT, NatConfig
from tests.scratch import Scratch, pin_dir

XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_ABORTED = 1, 2, 4, 0
H1, H2 = "10.0.1.2", "10.0.2.2"
PEER_IN, PEER_OUT = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


@pytest.fixture(scope="module")
def nat():
    s = Scratch("tnat")
    try:
        ns = s.ns("n")
        s.veth("nin", ns, "pin", ns)
        s.veth("nout", ns, "pout", ns)
        pd = pin_dir("tnat")
        cfg = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.101", port_lo=20000, port_hi=20999)
        inst = NAT.create("nat0", Wiring(ns, ("nin", "nout"), (PEER_IN, PEER_OUT)), pd, cfg, max_flows=4096)
        inst.ns = ns
        inst.idx = {side: netns.ifindex(name, ns) for side, name in (("in", "nin"), ("out", "nout"))}
        inst.cfg = cfg
        yield inst
        NAT.destroy(inst.wiring, pd)
    finally:
        s.close()


@pytest.fixture(autouse=True)
def fresh(nat):
    for m in ("nat_fwd", "nat_rev", "nat_ports", "nat_hosts", "nfx_marks", "nfx_stats", "nfx_filters"):
        nat.maps[m].clear()
    nat.configure(nat.cfg)
    yield


def run(nat, frame, side="in"):
    with netns.enter(nat.ns):
        v, out, _ = prog_test_run(nat.fn.fd, raw(frame), ingress_ifindex=nat.idx[side])
    assert v != XDP_ABORTED
    return v, Ether(out)


def eth():
    return Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb")


def eth_ip() -> bytes:
    return raw(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb", type=0x0800))


def checksums_ok(pkt) -> bool:
    """Recompute every checksum with scapy and compare with what the program wrote."""
    ref = pkt.copy()
    del ref[IP].chksum
    for layer in (TCP, UDP, ICMP):
        if layer in ref and not (layer is UDP and pkt[UDP].chksum == 0):
            del ref[layer].chksum
    ref = Ether(raw(ref))
    return raw(ref) == raw(pkt)


def stat(nat, name):
    return nat.stats().get(name, 0)


def test_udp_out_and_back(nat):
    v, o = run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=5000, dport=53) / Raw(b"q" * 20))
    assert v == XDP_REDIRECT
    assert o[IP].src in ("10.0.2.100", "10.0.2.101") and 20000 <= o[UDP].sport <= 20999
    assert o[IP].dst == H2 and o[UDP].dport == 53
    assert checksums_ok(o)
    # MACs now name this side and the next hop
    assert bytes.fromhex(o.dst.replace(":", "")) == PEER_OUT
    pub_ip, pub_port = o[IP].src, o[UDP].sport
    v2, o2 = run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=5000, dport=53) / Raw(b"q" * 20))
    assert (o2[IP].src, o2[UDP].sport) == (pub_ip, pub_port)
    # the reply finds its way back to the inside host and port
    v3, o3 = run(nat, eth() / IP(src=H2, dst=pub_ip) / UDP(sport=53, dport=pub_port) / Raw(b"a" * 9), "out")
    assert v3 == XDP_REDIRECT
    assert (o3[IP].dst, o3[UDP].dport, o3[IP].src, o3[UDP].sport) == (H1, 5000, H2, 53)
    assert checksums_ok(o3)
    assert bytes.fromhex(o3.dst.replace(":", "")) == PEER_IN
    [m] = nat.mappings()
    assert (m["pkts_out"], m["pkts_in"], m["complete"]) == (2, 1, True)
    assert m["public"] == f"{pub_ip}:{pub_port}"
    assert stat(nat, "r_nat_new") == 1


def test_tcp_both_ways_and_flags(nat):
    v, o = run(nat, eth() / IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags="S", seq=1))
    assert v == XDP_REDIRECT and checksums_ok(o)
    pub = (o[IP].src, o[TCP].sport)
    v, o = run(nat, eth() / IP(src=H2, dst=pub[0]) / TCP(sport=80, dport=pub[1], flags="SA"), "out")
    assert v == XDP_REDIRECT and checksums_ok(o) and (o[IP].dst, o[TCP].dport) == (H1, 40000)
    v, o = run(nat, eth() / IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags="FA") / Raw(b"x"))
    [m] = nat.mappings()
    assert m["tcp_flags"] & (L.TCP_SYN | L.TCP_FIN | L.TCP_ACK) == (L.TCP_SYN | L.TCP_FIN | L.TCP_ACK)


def test_icmp_echo_id_rewritten(nat):
    v, o = run(nat, eth() / IP(src=H1, dst=H2) / ICMP(type=8, id=777, seq=1) / Raw(b"ping"))
    assert v == XDP_REDIRECT and checksums_ok(o)
    nid = o[ICMP].id
    assert 20000 <= nid <= 20999
    v, o = run(nat, eth() / IP(src=H2, dst=o[IP].src) / ICMP(type=0, id=nid, seq=1) / Raw(b"ping"), "out")
    assert v == XDP_REDIRECT and checksums_ok(o)
    assert (o[IP].dst, o[ICMP].id) == (H1, 777)


def test_udp_zero_checksum_stays_zero(nat):
    p = eth() / IP(src=H1, dst=H2) / UDP(sport=6000, dport=7000, chksum=0) / Raw(b"z" * 8)
    v, o = run(nat, p)
    assert v == XDP_REDIRECT and o[UDP].chksum == 0 and checksums_ok(o)


def test_ip_options_are_translated(nat):
    p = eth() / IP(src=H1, dst=H2, options=b"\x01\x01\x01\x00") / UDP(sport=6001, dport=7000) / Raw(b"o" * 8)
    v, o = run(nat, p)
    assert v == XDP_REDIRECT and o[IP].ihl == 6 and checksums_ok(o)
    assert stat(nat, "r_ip_options") == 1


def test_empty_payload_is_processed(nat):
    v, o = run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=6002, dport=7000))
    assert v == XDP_REDIRECT and checksums_ok(o)
    assert stat(nat, "r_empty_payload") == 1


def test_unknown_inbound_and_foreign_source_dropped(nat):
    v, _ = run(nat, eth() / IP(src=H2, dst="10.0.2.100") / UDP(sport=53, dport=20001), "out")
    assert v == XDP_DROP and stat(nat, "r_nat_no_mapping") == 1
    v, _ = run(nat, eth() / IP(src="192.0.2.9", dst=H2) / UDP(sport=53, dport=53))
    assert v == XDP_DROP and stat(nat, "r_nat_not_inside") == 1
    assert len(nat.maps["nat_fwd"]) == 0


# BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (EINVAL), and so does a real
# veth, so the shortest frame here is a bare Ethernet header.
BAD = [
    ("ethernet only", lambda: Ether(type=0x0800), "r_trunc_ip"),
    ("vlan tagged", lambda: eth() / Dot1Q(vlan=5) / IP(src=H1, dst=H2) / UDP(), "r_vlan"),
    ("ipv6", lambda: eth() / IPv6() / UDP(), "r_ipv6"),
    ("other ethertype", lambda: Ether(type=0x88B5) / Raw(b"x" * 30), "r_non_ip"),
    ("truncated ip", lambda: Raw(raw(eth() / IP(src=H1, dst=H2))[:24]), "r_trunc_ip"),
    ("ip version 5", lambda: Raw(eth_ip() + bytes([0x55]) + raw(IP(src=H1, dst=H2) / UDP())[1:]), "r_bad_version"),
    ("ihl 4", lambda: Raw(eth_ip() + bytes([0x44]) + raw(IP(src=H1, dst=H2) / UDP())[1:]), "r_bad_ihl"),
    ("ihl past end", lambda: Raw(eth_ip() + bytes([0x4F]) + raw(IP(src=H1, dst=H2))[1:]), "r_trunc_ip"),
    ("first fragment", lambda: eth() / IP(src=H1, dst=H2, flags="MF") / UDP() / Raw(b"f" * 16), "r_fragment"),
    ("later fragment", lambda: eth() / IP(src=H1, dst=H2, frag=4) / Raw(b"f" * 16), "r_fragment"),
    ("truncated udp", lambda: Raw(raw(eth() / IP(src=H1, dst=H2, proto=17))[:14 + 20] + b"\x00\x01\x00"), "r_trunc_l4"),
    # cut short, the frame holds less than the IPv4 total length claims
    ("truncated tcp", lambda: Raw(raw(eth() / IP(src=H1, dst=H2) / TCP())[:14 + 20 + 10]), "r_bad_tot_len"),
    ("truncated tcp, total length fits", lambda: Raw(raw(eth() / IP(src=H1, dst=H2, len=30) / TCP())[:14 + 30]),
     "r_trunc_l4"),
    ("tcp doff past end", lambda: Raw(raw(eth() / IP(src=H1, dst=H2) / TCP(dataofs=15))), "r_trunc_l4"),
    ("gre", lambda: eth() / IP(src=H1, dst=H2, proto=47) / Raw(b"g" * 8), "r_unsupp_proto"),
    ("total length past frame", lambda: eth() / IP(src=H1, dst=H2, len=1400) / UDP(sport=1, dport=2), "r_bad_tot_len"),
    ("total length below ihl", lambda: eth() / IP(src=H1, dst=H2, len=12) / UDP() / Raw(b"x" * 8), "r_bad_tot_len"),
    ("udp header past total length", lambda: eth() / IP(src=H1, dst=H2, len=24) / UDP() / Raw(b"x" * 8), "r_trunc_l4"),
    ("icmp timestamp", lambda: eth() / IP(src=H1, dst=H2) / ICMP(type=13), "r_icmp_not_echo"),
]


@pytest.mark.parametrize("name,build,reason", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("side", ["in", "out"])
def test_bad_input_counted_never_aborted(nat, name, build, reason, side):
    v, _ = run(nat, build(), side)
    assert v == XDP_DROP
    s = nat.stats()
    assert s.get(reason, 0) == 1, s
    assert s.get("v_aborted", 0) == 0
    for m in ("nat_fwd", "nat_rev", "nat_ports"):
        assert len(nat.maps[m]) == 0


@pytest.mark.parametrize("side", ["in", "out"])
def test_arp_goes_to_the_local_stack(nat, side):
    # the NF's own namespace answers ARP for addresses it owns; nothing crosses, nothing is mapped
    v, _ = run(nat, eth() / ARP(psrc=H1, pdst=H2), side)
    assert v == XDP_PASS and stat(nat, "r_arp") == 1
    assert len(nat.maps["nat_fwd"]) == 0


def test_host_quota_limits_one_host_only(nat):
    nat.configure(NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.101", port_lo=20000, port_hi=20999,
                            host_quota=3))
    v = [run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=3000 + i, dport=9))[0] for i in range(5)]
    assert v == [XDP_REDIRECT] * 3 + [XDP_DROP] * 2
    assert stat(nat, "r_nat_quota") == 2
    # known flows of that host still pass, and another host is not held back
    assert run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=3000, dport=9))[0] == XDP_REDIRECT
    v = [run(nat, eth() / IP(src="10.0.1.3", dst=H2) / UDP(sport=3000 + i, dport=9))[0] for i in range(3)]
    assert v == [XDP_REDIRECT] * 3
    assert stat(nat, "r_nat_quota") == 2 and len(nat.maps["nat_fwd"]) == 6
    assert nat.recount_hosts() == {H1: 3, "10.0.1.3": 3}


def test_host_quota_frees_with_expiry(nat):
    nat.configure(NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.101", port_lo=20000, port_hi=20999,
                            host_quota=2, timeouts_s={"udp": 0.05, "tcp": 0.05, "tcp_closed": 0.05, "icmp": 0.05}))
    assert [run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=4000 + i, dport=9))[0] for i in range(3)] == \
        [XDP_REDIRECT, XDP_REDIRECT, XDP_DROP]
    time.sleep(0.1)
    # the datapath evicts an idle mapping when its flow comes back: the host gets the slot back
    assert run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=4000, dport=9))[0] == XDP_REDIRECT
    # the sweeper takes the idle rest and settles the count
    time.sleep(0.1)
    assert nat.sweep() == 2
    assert len(nat.maps["nat_hosts"]) == 0
    assert [run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=4100 + i, dport=9))[0] for i in range(3)] == \
        [XDP_REDIRECT, XDP_REDIRECT, XDP_DROP]


def test_ports_unique_across_many_flows(nat):
    seen = set()
    for i in range(300):
        v, o = run(nat, eth() / IP(src=f"10.0.1.{2 + i % 50}", dst=H2) / UDP(sport=1000 + i, dport=9) / Raw(b"m"))
        assert v == XDP_REDIRECT
        seen.add((o[IP].src, o[UDP].sport))
    assert len(seen) == 300
    assert len(nat.maps["nat_ports"]) == 300


def test_port_exhaustion_drops_and_counts(nat):
    nat.configure(NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.100", port_lo=30000, port_hi=30001))
    verdicts = [run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=2000 + i, dport=9))[0] for i in range(3)]
    assert verdicts == [XDP_REDIRECT, XDP_REDIRECT, XDP_DROP]
    assert stat(nat, "r_nat_ports_exhausted") == 1


def test_idle_mapping_evicted_by_datapath_and_sweeper(nat):
    short = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.100", port_lo=30000, port_hi=30000,
                      timeouts_s={"udp": 0.05, "tcp": 0.05, "tcp_closed": 0.05, "icmp": 0.05})
    nat.configure(short)
    assert run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=1, dport=9))[0] == XDP_REDIRECT
    # the only port is taken; once idle, a new flow reclaims it
    assert run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=2, dport=9))[0] == XDP_DROP
    time.sleep(0.1)
    assert run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=2, dport=9))[0] == XDP_REDIRECT
    assert stat(nat, "r_nat_expired") >= 1
    [m] = nat.mappings()
    assert m["sport"] == 2
    time.sleep(0.1)
    assert nat.sweep() == 1
    for m in ("nat_fwd", "nat_rev", "nat_ports"):
        assert len(nat.maps[m]) == 0


def test_an_entry_seen_later_than_this_cpus_clock_is_fresh(nat):
    """Each CPU reads the time once a tick (nfx_clock.h), so another CPU, or the instance a flow
    moved from, can have stamped an entry a tick later than this CPU's clock says it is now: that
    entry is fresh. Read unsigned, it was 2^64 ns old: the NAT evicted a live TCP connection's
    mapping and gave it a new port (a reset, in tests/netns/test_moves.py's ten moves)."""
    nat.configure(NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.100", port_lo=30000, port_hi=30009,
                            timeouts_s={"udp": 1.0, "tcp": 1.0, "tcp_closed": 1.0, "icmp": 1.0}))
    v, first = run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=7, dport=9))
    assert v == XDP_REDIRECT
    for table in ("nat_fwd", "nat_rev"):
        m = nat.maps[table]
        for k, e in list(m.items()):
            e.last_seen_ns += 20_000_000          # 20 ms ahead of any clock here
            m.put(k, e)
    v, again = run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=7, dport=9))
    assert v == XDP_REDIRECT and again[UDP].sport == first[UDP].sport
    assert stat(nat, "r_nat_expired") == 0 and len(nat.maps["nat_fwd"]) == 1


def test_gate_drop_by_mark_and_by_filter(nat):
    key = make_key(H1, H2, 5555, 53, "udp")
    nat.gate.mark([key], L.Action.DROP)
    assert run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=5555, dport=53))[0] == XDP_DROP
    assert stat(nat, "r_gate_drop") == 1
    nat.gate.unmark([key])
    assert run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=5555, dport=53))[0] == XDP_REDIRECT
    f = L.Filter(saddr=ip_to_be("10.0.1.0"), smask=ip_to_be("255.255.255.0"), proto=6,
                 action=int(L.Action.DROP), flags=L.FILTER_USED)
    nat.gate.put_filter(0, f)
    assert run(nat, eth() / IP(src=H1, dst=H2) / TCP(sport=1, dport=2))[0] == XDP_DROP
    assert run(nat, eth() / IP(src=H1, dst=H2) / UDP(sport=1, dport=2))[0] == XDP_REDIRECT


def test_pool_hash_picks_the_public_address(nat):
    """nfs.nat.pool_hash (the bench's address planning) is the datapath's paired-pooling hash."""
    import ipaddress
    from nfx.nfs.nat import parse_pool, pool_hash
    base, count = parse_pool(nat.cfg.pool)
    for last in range(2, 40):
        src = f"10.0.1.{last}"
        v, o = run(nat, eth() / IP(src=src, dst=H2) / UDP(sport=5000, dport=53) / Raw(b"q" * 20))
        assert v == XDP_REDIRECT
        want = base + pool_hash(int(ipaddress.IPv4Address(src))) % count
        assert o[IP].src == str(ipaddress.IPv4Address(want)), src
