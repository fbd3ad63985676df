"""Generator and sink end to end on a throwaway topology:

    h1: ga0 <-> ga1        (the generator's attach point; receives nothing)
    h1: tx0 <-> rx0 :h2    (generator frames leave tx0, the sink counts them on rx0)

Namespaces are ttr<random>a/b and are deleted in teardown even when setup fails half-way."""
import contextlib
import os
import secrets
import socket
import struct
import threading
import time

import pytest

from nfx import layout as L
from nfx.errors import BadInput, NotFound
from nfx.loader import netns
from nfx.traffic import loop
from nfx.traffic.gen import Generator
from nfx.traffic.report import measure
from nfx.traffic.sink import Sink

H1_IP, H2_IP, GEN_SRC = "10.77.0.1", "10.77.0.2", "10.77.0.10"
DPORT = 9000


@pytest.fixture(scope="module")
def topo():
    sfx = secrets.token_hex(3)
    h1, h2 = f"ttr{sfx}a", f"ttr{sfx}b"
    created = []
    try:
        for n in (h1, h2):
            created.append(n)              # registered first: a half-made namespace is removed too
            netns.add(n)
        netns.ip("link", "add", "tx0", "type", "veth", "peer", "name", "rx0", "netns", h2, ns=h1)
        netns.ip("link", "add", "ga0", "type", "veth", "peer", "name", "ga1", ns=h1)
        netns.ip("addr", "add", f"{H1_IP}/24", "dev", "tx0", ns=h1)
        netns.ip("addr", "add", f"{H2_IP}/24", "dev", "rx0", ns=h2)
        for d in ("tx0", "ga0", "ga1"):
            netns.ip("link", "set", d, "up", ns=h1)
        netns.ip("link", "set", "rx0", "up", ns=h2)
        yield {"h1": h1, "h2": h2, "rx_mac": netns.mac("rx0", h2)}
    finally:
        for n in created:
            netns.delete(n)
        assert not any(netns.exists(n) for n in created)


@contextlib.contextmanager
def rig(topo, nflows=1, proto="udp", size=None, pass_gen=False, fpa=None):
    """A generator on h1 and a sink on h2, both closed (detached) on exit."""
    g = s = None
    try:
        s = Sink(topo["h2"], "rx0", nflows, pass_gen=pass_gen)
        g = Generator(topo["h1"], "ga0", "tx0", dst_mac=topo["rx_mac"], dst_ip=H2_IP, src_ip=GEN_SRC,
                      dport=DPORT, proto=proto, size=size, nflows=nflows, flows_per_addr=fpa)
        yield g, s
    finally:
        if g:
            g.close()
        if s:
            s.close()


def snmp(ns: str) -> dict[str, dict[str, int]]:
    lines = netns.run(["cat", "/proc/net/snmp"], ns=ns).splitlines()
    out = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        proto, names = head.split(":", 1)
        out[proto] = dict(zip(names.split(), map(int, vals.split(":", 1)[1].split())))
    return out


def assert_clean(r, sent):
    assert r["sent"] == r["requested"] == sent
    assert r["received"] == sent, r
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0), r
    assert r["aborted"] == 0 and r["bad_flow"] == 0
    assert r["out_of_window"] == 0 and r["exact"] is True and r["clean"] is True


def test_udp_1000_flows_100k_pps(topo):
    with rig(topo, nflows=1000, fpa=100) as (g, s):
        r = measure(g, s, 100_000, 1.0)
        assert_clean(r, 100_000)
        assert 0.95 < r["elapsed_s"] < 1.3 and r["pps"] > 75_000
        per_flow = g.per_flow_total()
        assert sum(per_flow) == 100_000 and set(per_flow) == {100}
        flows = s.flows()
        assert all(f.received == 100 and f.high == 100 for f in flows)
        assert 0 < r["lat_p50_us"] <= r["lat_p99_us"] and r["lat_max_us"] < 1e6
        assert g.stats()["r_gen_sent"] == 100_000


def test_tcp_flagged_run(topo):
    with rig(topo, nflows=200, proto="tcp", size=200) as (g, s):
        r = measure(g, s, 50_000, 0.5)
        assert_clean(r, 25_000)
        assert set(g.per_flow_total()) == {125}


def _capture_socket(ns, ifname):
    with netns.enter(ns):
        sk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sk.bind((ifname, 0))
    sk.settimeout(0.5)
    return sk


def _captured_gen_frames(sk, want):
    frames = []
    magic = struct.pack("<I", L.GEN_MAGIC)
    deadline = time.monotonic() + 3
    while len(frames) < want and time.monotonic() < deadline:
        try:
            data, addr = sk.recvfrom(65535)
        except socket.timeout:
            break
        if addr[2] != socket.PACKET_OUTGOING and magic in data:
            frames.append(data)
    return frames


def _read_datagrams(us, n):
    got = []
    with contextlib.suppress(socket.timeout):
        while len(got) < n:
            got.append(us.recv(2048))
    return got


def _tamper_template(g, delta):
    """Add `delta` to the template's L4 checksum: every generated packet is then corrupt."""
    t = g.maps["gen_tmpl"].get(L.u32(0))
    off = 14 + 20 + (6 if g.proto == 17 else 16)
    v = (t.hdr[off] << 8 | t.hdr[off + 1]) + delta & 0xFFFF
    t.hdr[off], t.hdr[off + 1] = v >> 8, v & 0xFF
    g.maps["gen_tmpl"].put(L.u32(0), t)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_checksums_valid_end_to_end(topo, proto):
    """scapy recomputes both checksums of captured frames; h2's kernel, which verifies them on
    this path (XDP frames become CHECKSUM_NONE skbs), accepts every good one and counts every
    deliberately corrupted one: the negative control shows the check really runs."""
    from scapy.all import IP, TCP, UDP, Ether
    h2 = topo["h2"]
    n = 40
    with rig(topo, nflows=8, fpa=3, proto=proto, size=150, pass_gen=True) as (g, s):
        cap = _capture_socket(h2, "rx0")
        with netns.enter(h2):
            us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            us.bind((H2_IP, DPORT))
        us.settimeout(0.5)
        key = "Udp" if proto == "udp" else "Tcp"
        try:
            # negative control: corrupt template -> the kernel counts n checksum errors (UDP
            # verifies lazily, when the application reads: hence the reads before counting)
            before = snmp(h2)[key]
            _tamper_template(g, 1)
            g.send(n)
            assert len(_captured_gen_frames(cap, n)) == n
            assert _read_datagrams(us, n) == []
            after = snmp(h2)[key]
            assert after["InCsumErrors"] - before["InCsumErrors"] == n
            _tamper_template(g, -1)

            before = after
            g.send(n)
            frames = _captured_gen_frames(cap, n)
            got = _read_datagrams(us, n)
            after = snmp(h2)[key]
            assert after["InCsumErrors"] == before["InCsumErrors"]
            if proto == "udp":
                assert len(got) == n                        # the kernel delivered every datagram
                assert all(L.GenPayload.from_buffer_copy(d[:24]).magic == L.GEN_MAGIC for d in got)
            else:
                assert after["OutRsts"] - before["OutRsts"] == n    # closed port: one RST per valid segment
        finally:
            cap.close()
            us.close()

        assert len(frames) == n
        l4 = UDP if proto == "udp" else TCP
        seen = set()
        for f in frames:
            p = Ether(f)
            ref = p.copy()
            del ref[IP].chksum, ref[l4].chksum
            ref = Ether(bytes(ref))
            assert len(f) == 150
            assert p[IP].chksum == ref[IP].chksum and p[l4].chksum == ref[l4].chksum
            pl = L.GenPayload.from_buffer_copy(bytes(p[l4].payload)[:24])
            assert p[IP].src == f"10.77.0.{10 + pl.flow // 3}" and p[l4].sport == 1024 + pl.flow % 3
            if proto == "tcp":
                assert p[TCP].flags == "PA"
            seen.add((pl.flow, pl.seq))
        assert len(seen) == n
        # the sink counted both rounds and let them through
        r = s.read(g.per_flow_total())
        assert r["received"] == 2 * n and r["lost"] == 0


def test_loss_detected(topo):
    """Take the sink off rx0 for the middle 500 packets (a plain XDP_PASS program keeps native
    redirect working; the stack discards the frames): exactly those count as lost."""
    import bcc
    from nfx.loader import attach
    h2 = topo["h2"]
    with rig(topo, nflows=10) as (g, s):
        passer = bcc.BPF(text="int ttr_pass(struct xdp_md *ctx) { return XDP_PASS; }", cflags=["-w"])
        try:
            s.reset()
            g.reset()
            g.send(1000)
            attach.attach_xdp(h2, "rx0", passer.load_func("ttr_pass", bcc.BPF.XDP))
            g.send(500)
            attach.attach_xdp(h2, "rx0", s.fn)
            g.send(1000)
            time.sleep(0.1)
        finally:
            attach.attach_xdp(h2, "rx0", s.fn)
            passer.cleanup()
        r = s.read(g.per_flow_total())
        assert r["sent"] == 2500 and r["received"] == 2000
        assert (r["lost"], r["duplicated"], r["reordered"]) == (500, 0, 0)
        assert all(f.high == 250 for f in s.flows())


def _inject(ns, ifname, frames):
    """Send raw frames out of `ifname` in `ns` through the kernel (AF_PACKET): real packets."""
    with netns.enter(ns):
        sk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sk.bind((ifname, 0))
    with sk:
        for f in frames:
            sk.send(f)


def test_late_duplicate_loss_and_unexpected_on_the_wire(topo):
    """Over the veth: 1 packet per flow lost (sink detached), then a copy of flow 0's seq 2
    arriving ~200 packets late, and a flow-1 seq that was never sent. The sink reports each
    (the old 64-seq window let the late copy fill the lost slot: 0 lost, 0 duplicated)."""
    import bcc
    from nfx.loader import attach
    from nfx.traffic.gen import build_frame
    h1, h2 = topo["h1"], topo["h2"]
    with rig(topo, nflows=2) as (g, s):
        passer = bcc.BPF(text="int ttr_pass(struct xdp_md *ctx) { return XDP_PASS; }", cflags=["-w"])
        try:
            s.reset()
            g.reset()
            g.send(10)                                  # seqs 0-4 of each flow
            attach.attach_xdp(h2, "rx0", passer.load_func("ttr_pass", bcc.BPF.XDP))
            g.send(2)                                   # seq 5 of each: lost
            attach.attach_xdp(h2, "rx0", s.fn)
            g.send(400)                                 # seqs 6-205
        finally:
            attach.attach_xdp(h2, "rx0", s.fn)
            passer.cleanup()
        src_mac = netns.mac("tx0", h1)
        late = build_frame(src_mac, topo["rx_mac"], GEN_SRC, H2_IP, DPORT, 17, g.size, sport=1024, flow=0, seq=2)
        never = build_frame(src_mac, topo["rx_mac"], GEN_SRC, H2_IP, DPORT, 17, g.size, sport=1025, flow=1,
                            seq=5000)
        _inject(h1, "tx0", [late, never])
        time.sleep(0.1)
        r = s.read(g.per_flow_total())
        assert (r["sent"], r["received"]) == (412, 412), r
        assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (2, 1, 0, 1), r
        assert r["exact"] is True and r["clean"] is False


def test_host_stack_still_works(topo):
    h1, h2 = topo["h1"], topo["h2"]
    with rig(topo) as (g, s):
        netns.run(["ping", "-c", "2", "-W", "1", "-i", "0.2", H2_IP], ns=h1)
        with netns.enter(h2):
            srv = socket.socket()
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((H2_IP, 9100))
            srv.listen(1)
        srv.settimeout(3)
        echoed = []

        def serve():
            c, _ = srv.accept()
            with c:
                echoed.append(c.recv(100))
                c.sendall(b"pong")
        t = threading.Thread(target=serve)
        t.start()
        try:
            with netns.enter(h1):
                cl = socket.create_connection((H2_IP, 9100), timeout=3)
            with cl:
                cl.sendall(b"ping")
                assert cl.recv(100) == b"pong"
        finally:
            t.join(5)
            srv.close()
        assert echoed == [b"ping"]
        st = s.stats()
        assert st.get("r_sink_foreign", 0) >= 6 and "v_drop" not in st
        # and generator traffic is still counted alongside
        r = measure(g, s, 10_000, 0.1)
        assert_clean(r, 1_000)


@pytest.mark.parametrize("nflows,size", [(1, None), (1000, None), (1000, 1514)])
def test_max_rate_direct_chain(topo, nflows, size):
    """Flat out, h1 -> h2 with nothing in between: what the generator can offer an NF."""
    with rig(topo, nflows=nflows, size=size) as (g, s):
        r = measure(g, s, None, 1.0)
        print(f"\nmax rate nflows={nflows} size={g.size}: {r['pps'] / 1e6:.2f} Mpps sent, "
              f"received {r['received']} of {r['sent']} (lost {r['lost']}), "
              f"latency p50 {r['lat_p50_us']:.1f} us p99 {r['lat_p99_us']:.1f} us max {r['lat_max_us']:.1f} us")
        assert r["sent"] == r["requested"] and r["pps"] > 300_000
        assert r["duplicated"] == 0 and r["reordered"] == 0
        assert r["lost"] <= r["sent"] * 0.001


def test_loop_goes_round_clean_and_stops(topo):
    """A traffic loop (nfx.traffic.loop) h1 -> h2 and back: flat out on one CPU, every packet
    judged by the sink, nothing lost, and nothing goes round after the run; the pair goes with
    the link."""
    cpu = max(os.sched_getaffinity(0))
    with loop.link(topo["h1"], topo["h2"]) as (gen_end, sink_end):
        g = s = None
        try:
            s = Sink(topo["h2"], "rx0", 100, loop_if=sink_end)
            g = Generator(topo["h1"], gen_end, "tx0", dst_mac=topo["rx_mac"], dst_ip=H2_IP, src_ip=GEN_SRC,
                          dport=DPORT, nflows=100, pin_cpu=cpu, loop_from=(topo["h2"], sink_end))
            with pytest.raises(BadInput, match="flat out"):
                g.run(1000, 0.1)
            r = measure(g, s, None, 0.5)
            assert r["transport"] == "loop" and r["sent"] > 50_000, r
            assert r["received"] == r["sent"], r
            assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0), r
            assert r["exact"] is True and r["clean"] is True
            # stopped: what came round after the stop was dropped by the generator, no more
            assert 0 < g.stats().get("v_aborted", 0) <= loop.SEED_FRAMES
            n = s.received_total()
            time.sleep(0.1)
            assert s.received_total() == n
        finally:
            if g:
                g.close()
            if s:
                s.close()
    for ns, end in ((topo["h1"], gen_end), (topo["h2"], sink_end)):
        with pytest.raises(NotFound):
            netns.ifindex(end, ns)
