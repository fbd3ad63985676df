"""A corpus of malformed frames through the NAT and the IDS by BPF_PROG_TEST_RUN, both sides:
never ABORTED, never a packet inspected (r_ok), and every state table empty afterwards. The
corpus mutates well-formed packets one field at a time (total length, header lengths, version,
truncation at every byte of the headers) and adds seeded fuzz whose total length overstates the
frame. A user found that tot_len 1400 in a 60-byte frame made a NAT mapping and IDS entries."""
import random

import pytest
from scapy.all import ARP, Dot1Q, Ether, ICMP, IP, IPv6, Raw, TCP, UDP, raw

from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from nfx.nfs.base import Wiring
from nfx.nfs.ids import IDS, IdsConfig
from nfx.nfs.nat import NAT, NatConfig
from tests.scratch import Scratch, pin_dir

XDP_ABORTED = 0
H1, H2 = "10.0.1.2", "10.0.2.2"
ETH = raw(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb", type=0x0800))
PEERS = (bytes.fromhex("020000000001"), bytes.fromhex("020000000002"))
NAT_STATE = ("nat_fwd", "nat_rev", "nat_ports", "nat_hosts")
IDS_STATE = ("ids_flows", "ids_hosts", "ids_hostports")

BASES = {
    "udp": IP(src=H1, dst=H2) / UDP(sport=1000, dport=53) / Raw(b"EVIL" * 4),
    "tcp": IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags="S") / Raw(b"EVIL" * 4),
    "echo": IP(src=H1, dst=H2) / ICMP(type=8, id=5, seq=1) / Raw(b"EVIL" * 4),
    "options": IP(src=H1, dst=H2, options=b"\x01\x01\x01\x00") / UDP(sport=1001, dport=53) / Raw(b"EVIL"),
    # a reply from outside to a public tuple, and an ICMP error quoting one (the NAT's ICMP path)
    "reply": IP(src=H2, dst="10.0.2.100") / UDP(sport=53, dport=20000) / Raw(b"EVIL"),
    "icmp-error": IP(src=H2, dst="10.0.2.100") / ICMP(type=3, code=4) /
                  Raw(raw(IP(src="10.0.2.100", dst=H2) / UDP(sport=20000, dport=53) / Raw(b"EVIL"))),
}
L4_HDR = {"udp": 8, "tcp": 20, "echo": 8, "options": 8, "reply": 8, "icmp-error": 8}


def with_tot_len(d: bytes, n: int) -> bytes:
    return d[:2] + n.to_bytes(2, "big") + d[4:]


def corpus() -> list[tuple[str, bytes]]:
    out = []
    for name, pkt in BASES.items():
        d = raw(pkt)
        ihl = (d[0] & 15) * 4
        for n in (len(d) + 1, len(d) + 100, 1400, 0xFFFF):
            out.append((f"{name} tot_len {n} > {len(d)}", ETH + with_tot_len(d, n)))
        for n in (0, 1, 19, ihl - 1):
            out.append((f"{name} tot_len {n} < ihl", ETH + with_tot_len(d, n)))
        for k in range(0, L4_HDR[name]):
            out.append((f"{name} L4 header past tot_len ({k})", ETH + with_tot_len(d, ihl + k)))
        for cut in range(0, ihl + L4_HDR[name]):
            out.append((f"{name} cut at {cut}", ETH + d[:cut]))
        for v in (0, 6, 15):
            out.append((f"{name} version {v}", ETH + bytes([v << 4 | (d[0] & 15)]) + d[1:]))
        for h in range(0, 5):
            out.append((f"{name} ihl {h}", ETH + bytes([0x40 | h]) + d[1:]))
        out.append((f"{name} ihl 15", ETH + bytes([0x4F]) + d[1:]))
        out.append((f"{name} fragment", ETH + raw(IP(raw(pkt)[:ihl]) / Raw(d[ihl:]))[:6] +
                    b"\x20\x00" + d[8:]))                            # MF set
        out.append((f"{name} vlan", raw(Ether(src="02:00:00:00:00:aa") / Dot1Q(vlan=5) / pkt)))
    # the user's frame: 60 bytes on the wire, an IPv4 header claiming 1400
    user = raw(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src=H1, dst=H2, len=1400) /
               UDP(sport=1234, dport=53))
    out.append(("tot_len 1400 in a 60-byte frame", user + b"\x00" * (60 - len(user))))
    for doff in (0, 1, 4, 15):
        t = raw(IP(src=H1, dst=H2) / TCP(sport=40001, dport=80, dataofs=doff) / Raw(b"EVIL"))
        out.append((f"tcp doff {doff}", ETH + t))
    out.append(("arp", raw(Ether(src="02:00:00:00:00:aa") / ARP(psrc=H1, pdst=H2))))
    out.append(("ipv6", raw(Ether(src="02:00:00:00:00:aa") / IPv6() / UDP() / Raw(b"EVIL"))))
    rnd = random.Random(9)
    for i in range(120):
        body = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 80)))
        proto = rnd.choice((1, 6, 17))
        d = bytearray(raw(IP(src=H1, dst=H2, proto=proto) / Raw(body)))
        d[0] = 0x40 | rnd.randrange(5, 16)
        d[2:4] = (len(d) + rnd.randrange(1, 1500)).to_bytes(2, "big")   # always beyond the frame
        out.append((f"fuzz {i}", ETH + bytes(d)))
    return [(n, f) for n, f in out if len(f) >= 14]


CORPUS = corpus()


@pytest.fixture(scope="module")
def nfs():
    s = Scratch("tmf")
    made = []
    try:
        ns = s.ns("n")
        for a, b in (("mfa", "mfpa"), ("mfb", "mfpb"), ("mfc", "mfpc"), ("mfd", "mfpd")):
            s.veth(a, ns, b, ns)
        nat_pd, ids_pd = pin_dir("tmfn"), pin_dir("tmfi")
        nat = NAT.create("nat0", Wiring(ns, ("mfa", "mfb"), PEERS), nat_pd,
                         NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.101"), max_flows=1024)
        made.append((NAT, nat))
        ids = IDS.create("ids0", Wiring(ns, ("mfc", "mfd"), PEERS), ids_pd, IdsConfig(scan_threshold=1),
                         max_flows=1024, defines={"NFX_IDS_RING_PAGES": 1})
        made.append((IDS, ids))
        ids.add_signature(1, b"EVIL")
        for nf, names in ((nat, ("mfa", "mfb")), (ids, ("mfc", "mfd"))):
            nf.ns = ns
            nf.idx = [netns.ifindex(n, ns) for n in names]
        yield nat, ids
    finally:
        for cls, inst in made:
            cls.destroy(inst.wiring, inst.pin_dir)
        s.close()


def test_corpus_is_large_and_has_the_users_frame():
    assert len(CORPUS) >= 300
    assert any(len(f) == 60 and f[16:18] == (1400).to_bytes(2, "big") for _, f in CORPUS)


@pytest.mark.parametrize("which", ["nat", "ids"])
def test_malformed_corpus_makes_no_state(nfs, which):
    nf = nfs[0] if which == "nat" else nfs[1]
    state = NAT_STATE if which == "nat" else IDS_STATE
    nf.maps["nfx_stats"].clear()
    verdicts = {}
    with netns.enter(nf.ns):
        for name, frame in CORPUS:
            for side in (0, 1):
                v, _, _ = prog_test_run(nf.fn.fd, frame, ingress_ifindex=nf.idx[side])
                verdicts[(name, side)] = v
    aborted = [k for k, v in verdicts.items() if v == XDP_ABORTED]
    assert aborted == []
    s = nf.stats()
    assert s.get("v_aborted", 0) == 0 and s.get("r_ok", 0) == 0, s
    assert s.get("r_bad_tot_len", 0) >= 4 * len(BASES) + 120
    for m in state:
        assert len(nf.maps[m]) == 0, (m, s)
    if which == "ids":
        g = nf.global_counters()
        assert g["pkts"] == 0 and g["alerts"] == 0 and nf.sig_hits() == {1: 0}
        assert nf.alerts().poll() == []
