"""IDS verdicts, output bytes, counters, scan detection, signatures and alerts through
BPF_PROG_TEST_RUN, checked against scapy-built packets."""
import ctypes as ct
import json
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.all import ARP, Dot1Q, Ether, ICMP, IP, IPv6, Raw, TCP, UDP, raw

from nfx import layout as L
from nfx.errors import BadInput, NotFound
from nfx.flows import make_key
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from nfx.nfs.ids import IDS, IdsConfig, Signature
from nfx.paths import REPO
from tests.scratch import PEER_IN, PEER_OUT, scratch_nf

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT = 0, 1, 2, 4
H1, H2 = "10.0.1.2", "10.0.2.2"
MAX_FLOWS = 64
RING_RECORDS = 4096 // (ct.sizeof(L.IdsAlert) + 8)     # one page; each record has an 8-byte header


CLOCK_MONOTONIC_COARSE = 6        # Linux's; Python's time module does not name it


def tick_before() -> int:
    """A time no later than what the IDS stamps a packet sent after it with: its clock is the
    kernel tick's (nfx_clock.h), which may lag CLOCK_MONOTONIC by up to a tick (4 ms at HZ 250;
    10 ms at HZ 100)."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE) - 10_000_000


@pytest.fixture(scope="module")
def ids():
    with scratch_nf(IDS, "tid", IdsConfig(), max_flows=MAX_FLOWS, defines={"NFX_IDS_RING_PAGES": 1}) as inst:
        inst.idx["lo"] = 1
        inst.mac = {"in": netns.mac("tidi", inst.ns), "out": netns.mac("tido", inst.ns)}
        inst.reader = inst.alerts()
        try:
            yield inst
        finally:
            inst.reader.close()


@pytest.fixture(autouse=True)
def fresh(ids):
    ids.reset()
    for m in ("nfx_stats", "nfx_marks", "nfx_filters", "ids_sigs"):
        ids.maps[m].clear()
    ids.configure(IdsConfig())
    ids.reader.poll()                  # drain what earlier tests left in the ring
    yield


def run(ids, frame, side="in"):
    with netns.enter(ids.ns):
        v, out, _ = prog_test_run(ids.fn.fd, raw(frame), ingress_ifindex=ids.idx[side])
    assert v != XDP_ABORTED
    return v, out


def eth():
    return Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb")


def eth_ip() -> bytes:
    return raw(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb", type=0x0800))


def udp(payload=b"data", sport=5000, dport=53, src=H1, dst=H2):
    return eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)


def stat(ids, name):
    return ids.stats().get(name, 0)


def state_empty(ids) -> bool:
    return all(len(ids.maps[m]) == 0 for m in ("ids_flows", "ids_hosts", "ids_hostports"))


# ---- forwarding -----------------------------------------------------------------------------
@pytest.mark.parametrize("side,to", [("in", "out"), ("out", "in")])
@pytest.mark.parametrize("pkt", [
    udp(b"hello"),
    eth() / IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags="PA") / Raw(b"GET / HTTP/1.1\r\n"),
    eth() / IP(src=H1, dst=H2) / ICMP(type=8, id=9, seq=1) / Raw(b"ping"),
    eth() / IP(src=H1, dst=H2) / ICMP(type=0, id=9, seq=1) / Raw(b"pong"),
], ids=["udp", "tcp", "echo", "echo-reply"])
def test_forwards_unchanged_to_other_side(ids, pkt, side, to):
    frame = raw(pkt)
    v, out = run(ids, frame, side)
    assert v == XDP_REDIRECT
    peer = PEER_OUT if to == "out" else PEER_IN
    assert out == peer + ids.mac[to] + frame[12:]
    assert stat(ids, "v_redirect") == 1 and stat(ids, "r_ok") == 1


# ---- per-flow, per-host and global counters -------------------------------------------------
def test_flow_and_host_counters(ids):
    pkts = [eth() / IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags=f) / Raw(b"x" * n)
            for f, n in (("S", 0), ("A", 10), ("FA", 3))]
    t0 = tick_before()
    for p in pkts:
        assert run(ids, p)[0] == XDP_REDIRECT
    t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    total = sum(len(raw(p)) for p in pkts)
    [f] = ids.flows()
    assert (f["src"], f["dst"], f["sport"], f["dport"], f["proto"]) == (H1, H2, 40000, 80, "tcp")
    assert (f["pkts"], f["bytes"], f["sig_hits"]) == (3, total, 0)
    assert t0 <= f["first_ns"] <= f["last_ns"] <= t1
    assert f["tcp_flags"] == L.TCP_SYN | L.TCP_ACK | L.TCP_FIN
    [h] = ids.hosts()
    assert h == {"addr": H1, "pkts": 3, "bytes": total, "flows": 1, "dports": 1, "alerts": 0,
                 "scan_alerted": False}
    g = ids.global_counters()
    assert (g["pkts"], g["bytes"], g["flows"], g["hosts"], g["sig_hits"], g["alerts"]) == (3, total, 1, 1, 0, 0)


def test_each_direction_is_its_own_flow_and_host(ids):
    run(ids, udp(sport=5000, dport=53))
    run(ids, udp(sport=5001, dport=53))
    run(ids, udp(sport=53, dport=5000, src=H2, dst=H1), "out")
    flows = {(f["src"], f["sport"], f["dport"]): f["pkts"] for f in ids.flows()}
    assert flows == {(H1, 5000, 53): 1, (H1, 5001, 53): 1, (H2, 53, 5000): 1}
    hosts = {h["addr"]: (h["flows"], h["dports"]) for h in ids.hosts()}
    # two flows from H1 to one port; one flow from H2
    assert hosts == {H1: (2, 1), H2: (1, 1)}
    assert ids.global_counters()["hosts"] == 2


def test_flow_table_full_still_forwards_and_evicts(ids):
    n = 2 * MAX_FLOWS
    for i in range(n):
        assert run(ids, udp(sport=1000 + i))[0] == XDP_REDIRECT
    # LRU: a full table hands its least recently used entries to newcomers
    flows = ids.flows()
    assert len(flows) <= MAX_FLOWS
    assert any(f["sport"] == 1000 + n - 1 for f in flows)
    assert stat(ids, "r_ids_map_full") == 0
    [h] = ids.hosts()
    assert (h["pkts"], h["flows"]) == (n, n)
    assert ids.global_counters()["pkts"] == n
    ev = ids.evictions()
    assert ev["ids_flows"] == n - len(flows) >= MAX_FLOWS
    assert ev["ids_hosts"] == ev["ids_hostports"] == 0       # one source, one port


# ---- scan detection -------------------------------------------------------------------------
def test_distinct_ports_and_exactly_one_scan_alert(ids):
    ids.configure(IdsConfig(scan_threshold=5))
    for port in (1, 2, 3, 4, 1, 2, 3, 4):
        run(ids, eth() / IP(src=H1, dst=H2) / TCP(sport=999, dport=port, flags="S"))
    [h] = ids.hosts()
    assert (h["dports"], h["flows"], h["scan_alerted"]) == (4, 4, False)
    assert ids.reader.poll() == [] and stat(ids, "r_ids_scan_alert") == 0
    t0 = tick_before()
    for port in range(5, 12):
        assert run(ids, eth() / IP(src=H1, dst=H2) / TCP(sport=999, dport=port, flags="S"))[0] == XDP_REDIRECT
    [h] = ids.hosts()
    assert (h["dports"], h["alerts"], h["scan_alerted"]) == (11, 1, True)
    assert stat(ids, "r_ids_scan_alert") == 1
    [a] = ids.reader.poll()
    assert (a.kind, a.sig_id) == ("scan", 5)
    assert (a.flow["src"], a.flow["dst"], a.flow["dport"], a.flow["proto"]) == (H1, H2, 5, "tcp")
    assert a.ts_ns >= t0
    assert ids.global_counters()["alerts"] == 1


def test_spoofed_scan_flood_does_not_blind_scan_detection(ids):
    """A flood from spoofed sources fills every table many times over; the LRU tables give the
    oldest entries to newcomers, so a new scanner still gets its entries and its alert."""
    ids.configure(IdsConfig(scan_threshold=5))
    n = 8 * MAX_FLOWS
    for i in range(n):                      # one port per spoofed source: below the threshold
        src = f"10.9.{i // 250}.{i % 250 + 1}"
        assert run(ids, eth() / IP(src=src, dst=H2) / TCP(sport=1024 + i, dport=1 + i, flags="S"))[0] == XDP_REDIRECT
    assert ids.reader.poll() == [] and stat(ids, "r_ids_map_full") == 0
    ev = ids.evictions()
    assert all(ev[t] >= n - MAX_FLOWS for t in ("ids_flows", "ids_hosts", "ids_hostports")), ev
    scanner = "10.0.1.77"
    for port in range(100, 110):
        assert run(ids, eth() / IP(src=scanner, dst=H2) / TCP(sport=999, dport=port, flags="S"))[0] == XDP_REDIRECT
    [a] = ids.reader.poll()
    assert (a.kind, a.sig_id, a.flow["src"]) == ("scan", 5, scanner)
    assert stat(ids, "r_ids_scan_alert") == 1
    [h] = [h for h in ids.hosts() if h["addr"] == scanner]
    assert (h["dports"], h["scan_alerted"]) == (10, True)


def test_ports_count_per_protocol_and_per_source(ids):
    ids.configure(IdsConfig(scan_threshold=3))
    run(ids, udp(dport=7))
    run(ids, eth() / IP(src=H1, dst=H2) / TCP(sport=5000, dport=7))
    run(ids, udp(dport=7, src="10.0.1.3"))
    hosts = {h["addr"]: h["dports"] for h in ids.hosts()}
    assert hosts == {H1: 2, "10.0.1.3": 1}
    assert ids.reader.poll() == []
    # a third distinct (port, proto) from H1 reaches the threshold
    run(ids, eth() / IP(src=H1, dst=H2) / ICMP(type=8, id=1))
    [a] = ids.reader.poll()
    assert (a.kind, a.sig_id, a.flow["proto"]) == ("scan", 3, "icmp")


def test_scan_threshold_zero_never_alerts(ids):
    ids.configure(IdsConfig(scan_threshold=0))
    for port in range(1, 30):
        run(ids, udp(dport=port))
    assert ids.hosts()[0]["dports"] == 29
    assert ids.reader.poll() == [] and stat(ids, "r_ids_scan_alert") == 0


def test_reset_lets_a_scan_alert_again(ids):
    ids.configure(IdsConfig(scan_threshold=2))
    for port in (1, 2):
        run(ids, udp(dport=port))
    assert len(ids.reader.poll()) == 1
    ids.reset()
    assert state_empty(ids) and ids.global_counters()["pkts"] == 0
    for port in (1, 2):
        run(ids, udp(dport=port))
    assert [a.kind for a in ids.reader.poll()] == ["scan"]


# ---- signatures -----------------------------------------------------------------------------
def tcp_payload(payload, doff_opts=b""):
    return eth() / IP(src=H1, dst=H2) / TCP(sport=4000, dport=80, options=doff_opts or []) / Raw(payload)


PAT16 = bytes(range(0x41, 0x51))
# (name, pattern, offset, proto, packet, matches)
SIG_CASES = [
    ("at payload start", b"EVIL", 0, 0, udp(b"EVIL and more"), True),
    ("at offset", b"EVIL", 3, 0, udp(b"abcEVIL"), True),
    ("wrong offset", b"EVIL", 2, 0, udp(b"abcEVIL"), False),
    ("one byte", b"\xff", 1, 0, udp(b"\x00\xff"), True),
    ("one byte differs", b"\xff", 1, 0, udp(b"\x00\xfe"), False),
    ("nine bytes across the word", b"123456789", 0, 0, udp(b"123456789"), True),
    ("ninth byte differs", b"123456789", 0, 0, udp(b"12345678X"), False),
    ("sixteen bytes", PAT16, 0, 0, udp(PAT16 + b"tail"), True),
    ("sixteenth byte differs", PAT16, 0, 0, udp(PAT16[:15] + b"!"), False),
    ("first byte differs", PAT16, 0, 0, udp(b"!" + PAT16[1:]), False),
    ("pattern runs past the end", b"EVIL", 0, 0, udp(b"EVI"), False),
    ("ethernet padding is not payload", b"\x00\x00", 0, 0, Raw(raw(udp(b"")) + b"\x00" * 18), False),
    ("empty payload", b"E", 0, 0, udp(b""), False),
    ("proto restricts: tcp sig, udp pkt", b"EVIL", 0, 6, udp(b"EVIL"), False),
    ("proto restricts: tcp sig, tcp pkt", b"EVIL", 0, 6, tcp_payload(b"EVIL"), True),
    ("after tcp options", b"EVIL", 0, 6, tcp_payload(b"EVIL", [("MSS", 1460), ("NOP", None), ("NOP", None)]), True),
    ("tcp header is not payload", b"\x0f\xa0", 0, 0, tcp_payload(b"zz"), False),
    ("icmp echo payload", b"ping", 0, 1, eth() / IP(src=H1, dst=H2) / ICMP(type=8, id=1) / Raw(b"ping"), True),
    ("after ip options", b"EVIL", 0, 17, eth() / IP(src=H1, dst=H2, options=b"\x01\x01\x01\x00") / UDP() / Raw(b"EVIL"), True),
    ("far offset", b"Z", 1000, 0, udp(b"a" * 1000 + b"Z"), True),
    ("offset past the packet", b"Z", 60000, 0, udp(b"Z"), False),
]


@pytest.mark.parametrize("name,pattern,offset,proto,pkt,hit", SIG_CASES, ids=[c[0] for c in SIG_CASES])
def test_signature_table(ids, name, pattern, offset, proto, pkt, hit):
    slot = ids.add_signature(42, pattern, offset, proto)
    t0 = tick_before()
    v, out = run(ids, pkt)
    assert v == XDP_REDIRECT and out[12:] == raw(pkt)[12:]
    assert ids.sig_hits() == {42: int(hit)}
    assert ids.maps["ids_sig_hits"].sum_percpu(L.u32(slot)) == int(hit)
    assert stat(ids, "r_ids_sig_match") == int(hit)
    [f] = ids.flows()
    assert f["sig_hits"] == int(hit)
    alerts = ids.reader.poll()
    if not hit:
        assert alerts == []
        return
    [a] = alerts
    key = Ether(raw(pkt))[IP]
    assert (a.kind, a.sig_id) == ("sig", 42)
    assert (a.flow["src"], a.flow["dst"]) == (key.src, key.dst)
    assert a.ts_ns >= t0
    assert ids.hosts()[0]["alerts"] == 1
    g = ids.global_counters()
    assert (g["sig_hits"], g["alerts"]) == (1, 1)


def test_several_signatures_match_one_packet(ids):
    ids.add_signature(1, b"GET")
    ids.add_signature(2, b"admin", 5)
    ids.add_signature(3, b"nothere")
    run(ids, udp(b"GET /admin HTTP/1.0"))
    assert ids.sig_hits() == {1: 1, 2: 1, 3: 0}
    assert sorted(a.sig_id for a in ids.reader.poll()) == [1, 2]
    assert ids.flows()[0]["sig_hits"] == 2


def test_signatures_change_at_run_time(ids):
    pkt = udp(b"EVIL payload")
    run(ids, pkt)
    assert ids.reader.poll() == []
    slot = ids.add_signature(7, b"EVIL")
    run(ids, pkt)
    assert [a.sig_id for a in ids.reader.poll()] == [7]
    # same id replaces in place; the slot's hit counter restarts
    assert ids.add_signature(7, b"payload", 5) == slot
    assert ids.sig_hits() == {7: 0}
    run(ids, pkt)
    assert ids.sig_hits() == {7: 1}
    assert [a.sig_id for a in ids.reader.poll()] == [7]
    assert ids.signatures() == [Signature(7, b"payload", 5, 0, slot)]
    assert ids.config().nsigs == 1
    assert ids.remove_signature(7) == slot
    run(ids, pkt)
    assert ids.reader.poll() == []
    assert ids.signatures() == [] and ids.config().nsigs == 0
    assert stat(ids, "r_ids_sig_match") == 2
    with pytest.raises(NotFound):
        ids.remove_signature(7)


def test_signature_table_limits(ids):
    slots = {ids.add_signature(100 + i, bytes([i + 1])) for i in range(L.IDS_MAX_SIGS)}
    assert slots == set(range(L.IDS_MAX_SIGS))
    with pytest.raises(BadInput):
        ids.add_signature(999, b"x")
    for bad in (b"", b"x" * 17):
        with pytest.raises(BadInput):
            ids.add_signature(1, bad)
    # a freed slot is reused
    ids.remove_signature(105)
    assert ids.add_signature(999, b"x") == 5
    # every slot in use: the last one still matches
    run(ids, udp(bytes([L.IDS_MAX_SIGS])))
    assert ids.sig_hits()[100 + L.IDS_MAX_SIGS - 1] == 1


def test_configured_signatures(ids):
    ids.configure(IdsConfig(scan_threshold=9, signatures=[Signature(5, b"abc", proto="udp")]))
    assert ids.config().scan_threshold == 9
    [s] = ids.signatures()
    assert (s.id, s.pattern, s.proto) == (5, b"abc", 17)


def test_garbage_slot_written_behind_our_back_is_ignored(ids):
    ids.add_signature(1, b"nomatch")          # nsigs > 0, so the datapath does match
    s = L.IdsSig(id=66, offset=0, len=200, proto=0)
    ct.memmove(s.pattern, b"EVIL", 4)
    ids.maps["ids_sigs"].put(L.u32(3), s)
    v, _ = run(ids, udp(b"EVIL"))
    assert v == XDP_REDIRECT and stat(ids, "r_ids_sig_match") == 0


def test_ring_full_is_counted_and_nothing_is_lost_silently(ids):
    ids.add_signature(9, b"EVIL")
    n = RING_RECORDS + 40
    for i in range(n):
        assert run(ids, udp(b"EVIL", sport=2000 + i % 8))[0] == XDP_REDIRECT
    got = ids.reader.poll()
    full = stat(ids, "r_ids_ring_full")
    assert full > 0 and len(got) + full == n
    assert ids.global_counters()["alerts"] == n
    # drained, the ring takes alerts again
    run(ids, udp(b"EVIL"))
    assert len(ids.reader.poll()) == 1


# ---- reading from another process --------------------------------------------------------------
READER = """
import json, sys
from pathlib import Path
from nfx.nfs.ids import IDS
ids = IDS.open(sys.argv[2], Path(sys.argv[1]))
with ids.alerts() as r:
    got = []
    for a in r.follow(timeout_s=3, poll_ms=100):
        got.append(a.__dict__)
        if len(got) == 2:
            break
print(json.dumps({"alerts": got, "flows": ids.flows(), "hits": ids.sig_hits()}))
"""


def test_alerts_and_tables_from_another_process(ids):
    ids.add_signature(11, b"EVIL")
    run(ids, udp(b"EVIL", sport=1111))
    run(ids, udp(b"xEVIL", sport=2222))
    run(ids, udp(b"EVIL", sport=3333))
    r = subprocess.run([sys.executable, "-c", READER, str(ids.pd), ids.instance], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [(a["kind"], a["sig_id"], a["flow"]["sport"]) for a in res["alerts"]] == [("sig", 11, 1111), ("sig", 11, 3333)]
    assert len(res["flows"]) == 3 and res["hits"] == {"11": 2}
    # the other process consumed them: nothing left here
    assert ids.reader.poll() == []


# ---- what the IDS does not process -----------------------------------------------------------
# BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, so the shortest is a bare one.
BAD = [
    ("ethernet only", lambda: Ether(type=0x0800), "r_trunc_ip"),
    ("vlan tagged", lambda: eth() / Dot1Q(vlan=5) / IP(src=H1, dst=H2) / UDP(), "r_vlan"),
    ("qinq", lambda: Ether(type=0x88A8) / Dot1Q(vlan=5) / IP(src=H1, dst=H2) / UDP(), "r_vlan"),
    ("arp", lambda: eth() / ARP(psrc=H1, pdst=H2), "r_arp"),
    ("ipv6", lambda: eth() / IPv6() / UDP() / Raw(b"EVIL"), "r_ipv6"),
    ("other ethertype", lambda: Ether(type=0x88B5) / Raw(b"x" * 30), "r_non_ip"),
    ("truncated ip", lambda: Raw(raw(eth() / IP(src=H1, dst=H2))[:24]), "r_trunc_ip"),
    ("ip version 5", lambda: Raw(eth_ip() + bytes([0x55]) + raw(IP(src=H1, dst=H2) / UDP())[1:]), "r_bad_version"),
    ("ihl 4", lambda: Raw(eth_ip() + bytes([0x44]) + raw(IP(src=H1, dst=H2) / UDP())[1:]), "r_bad_ihl"),
    ("ihl 0", lambda: Raw(eth_ip() + bytes([0x40]) + raw(IP(src=H1, dst=H2) / UDP())[1:]), "r_bad_ihl"),
    ("ihl past end", lambda: Raw(eth_ip() + bytes([0x4F]) + raw(IP(src=H1, dst=H2))[1:]), "r_trunc_ip"),
    ("total length below ihl", lambda: eth() / IP(src=H1, dst=H2, len=12) / UDP() / Raw(b"EVIL"), "r_bad_tot_len"),
    ("total length past frame", lambda: eth() / IP(src=H1, dst=H2, len=1400) / UDP(sport=1, dport=2) / Raw(b"EVIL"),
     "r_bad_tot_len"),
    ("first fragment", lambda: eth() / IP(src=H1, dst=H2, flags="MF") / UDP() / Raw(b"EVIL"), "r_fragment"),
    ("later fragment", lambda: eth() / IP(src=H1, dst=H2, frag=4) / Raw(b"EVIL" * 4), "r_fragment"),
    ("truncated udp", lambda: Raw(raw(eth() / IP(src=H1, dst=H2, proto=17))[:14 + 20] + b"\x00\x01\x00"), "r_trunc_l4"),
    # cut short, the frame holds less than the IPv4 total length claims
    ("truncated tcp", lambda: Raw(raw(eth() / IP(src=H1, dst=H2) / TCP())[:14 + 20 + 10]), "r_bad_tot_len"),
    ("truncated tcp, total length fits", lambda: Raw(raw(eth() / IP(src=H1, dst=H2, len=30) / TCP())[:14 + 30]),
     "r_trunc_l4"),
    ("tcp doff past end", lambda: Raw(raw(eth() / IP(src=H1, dst=H2) / TCP(dataofs=15))), "r_trunc_l4"),
    ("tcp doff below 5", lambda: eth() / IP(src=H1, dst=H2) / TCP(dataofs=4) / Raw(b"EVIL"), "r_trunc_l4"),
    ("truncated icmp", lambda: Raw(raw(eth() / IP(src=H1, dst=H2, proto=1))[:14 + 20] + b"\x08\x00"), "r_trunc_l4"),
    ("gre", lambda: eth() / IP(src=H1, dst=H2, proto=47) / Raw(b"EVIL" * 2), "r_unsupp_proto"),
    ("icmp unreachable", lambda: eth() / IP(src=H1, dst=H2) / ICMP(type=3, code=1) / Raw(b"EVIL" * 7), "r_icmp_not_echo"),
]


# what the IDS cannot inspect but need not break: forwarded by default, dropped on request
UNINSPECTED = {"r_vlan", "r_arp", "r_ipv6", "r_non_ip", "r_fragment", "r_unsupp_proto", "r_icmp_not_echo"}


@pytest.mark.parametrize("name,build,reason", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("side", ["in", "out"])
@pytest.mark.parametrize("drop", [False, True], ids=["pass-uninspected", "drop-uninspected"])
def test_bad_input_counted_no_state(ids, name, build, reason, side, drop):
    ids.add_signature(1, b"EVIL")
    ids.configure(IdsConfig(scan_threshold=1, drop_uninspected=drop))
    frame = raw(build())
    v, out = run(ids, frame, side)
    s = ids.stats()
    if reason in UNINSPECTED:
        assert s.get("r_ids_uninspected", 0) == 1, s
        if drop:
            assert v == XDP_DROP and s.get("v_drop", 0) == 1, s
        else:
            to = "out" if side == "in" else "in"
            assert v == XDP_REDIRECT and s.get("v_redirect", 0) == 1, s
            assert out == (PEER_OUT if to == "out" else PEER_IN) + ids.mac[to] + frame[12:]
    else:                                   # malformed: dropped whatever the policy
        assert v == XDP_DROP and s.get("v_drop", 0) == 1 and "r_ids_uninspected" not in s, s
    assert s.get(reason, 0) == 1, s
    assert s.get("v_aborted", 0) == 0 and s.get("r_ok", 0) == 0
    assert state_empty(ids)
    assert ids.global_counters()["pkts"] == 0 and ids.sig_hits() == {1: 0}
    assert ids.reader.poll() == []


# IP options and an empty payload are legal: counted, then inspected and forwarded like any packet.
@pytest.mark.parametrize("pkt,reason", [
    (eth() / IP(src=H1, dst=H2, options=b"\x01\x01\x01\x00") / UDP(sport=1, dport=2) / Raw(b"o" * 8), "r_ip_options"),
    (eth() / IP(src=H1, dst=H2) / UDP(sport=1, dport=2), "r_empty_payload"),
    (eth() / IP(src=H1, dst=H2) / TCP(sport=1, dport=2, flags="S"), "r_empty_payload"),
], ids=["ip options", "empty udp", "bare syn"])
def test_legal_oddities_counted_and_processed(ids, pkt, reason):
    v, out = run(ids, pkt)
    assert v == XDP_REDIRECT and out[12:] == raw(pkt)[12:]
    assert stat(ids, reason) == 1 and stat(ids, "r_ok") == 1
    assert len(ids.flows()) == 1


def test_unknown_ingress_port_dropped(ids):
    v, _ = run(ids, udp(), "lo")
    assert v == XDP_DROP and stat(ids, "r_no_port") == 1 and state_empty(ids)


def test_gate_drop_and_buffer(ids):
    ids.gate.mark([make_key(H1, H2, 5000, 53, "udp")], L.Action.DROP)
    assert run(ids, udp())[0] == XDP_DROP
    assert stat(ids, "r_gate_drop") == 1 and state_empty(ids)
    ids.gate.mark([make_key(H1, H2, 5000, 53, "udp")], L.Action.BUFFER)
    assert run(ids, udp())[0] == XDP_DROP
    # buffered (a copy went to the ring for the agent), not inspected here
    assert stat(ids, "r_buffered") == 1 and state_empty(ids)
    assert run(ids, udp(sport=5001))[0] == XDP_REDIRECT


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=0, max_size=120), proto=st.sampled_from([1, 6, 17, 47]),
       ihl=st.integers(0, 15), cut=st.integers(14, 200))
def test_fuzz_never_aborts(ids, body, proto, ihl, cut):
    ids.add_signature(1, b"\x00")
    hdr = bytearray(raw(IP(src=H1, dst=H2, proto=proto) / Raw(body)))
    hdr[0] = 0x40 | ihl
    frame = (eth_ip() + bytes(hdr))[:cut]
    v, _ = run(ids, Raw(frame))
    assert v in (XDP_DROP, XDP_REDIRECT)
    assert stat(ids, "v_aborted") == 0


def test_empty_tx_slot_drops_instead_of_aborting(ids):
    tx = ids.maps["nfx_tx"]
    tx.delete(L.u32(L.SIDE_OUT))
    try:
        v, _ = run(ids, udp())
        assert v == XDP_DROP and stat(ids, "r_redirect_fail") == 1
    finally:
        with netns.enter(ids.ns):
            tx.put(L.u32(L.SIDE_OUT), L.u32(ids.idx["out"]))
    assert run(ids, udp())[0] == XDP_REDIRECT

