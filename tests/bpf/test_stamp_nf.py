"""The stamper's trailer at an NF (bpf/include/nfx_stamp.h) and the gate's share flag, through
BPF_PROG_TEST_RUN: a stamped frame leaves exactly as the same frame unstamped would (bytes and
state); a packet the gate holds or buffers keeps its trailer until the instance processes it on
release; with Gate.set_share(True) every processed packet writes a record led by a STAMP
statelet carrying its flow key and stamp, which replay skips."""
import os
import struct

import pytest
from scapy.all import Ether, IP, Raw, TCP, UDP, raw

from nfx import layout as L
from nfx.flows import make_key
from nfx.gate import FRAME0, Gate
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from nfx.nfs.ids import IDS, IdsConfig
from nfx.nfs.nat import NAT, NatConfig
from nfx.state import ops
from nfx.state import replay as R
from nfx.state import statelets as S
from tests.scratch import scratch_nf

XDP_ABORTED, XDP_DROP, XDP_REDIRECT = 0, 1, 4
H1, H2 = "10.0.1.2", "10.0.2.2"
STATE = ("per-flow", "multi-flow")
NAT_CFG = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.101", port_lo=20000, port_hi=20999)


def stamp(frame: bytes, count: int) -> bytes:
    return frame + struct.pack(">II", L.STAMP_MAGIC, count)


def _instance(cls, tag, cfg):
    with scratch_nf(cls, tag, cfg, max_flows=1024) as inst:
        inst.cfg = cfg
        inst.reader = S.StateletReader(inst)
        # a release veth for the release path's test runs: any interface of the netns will do
        pc = inst.maps.nfx_port_cfg.get(L.u32(0))
        pc.release_ifindex = inst.release_idx = netns.ifindex(f"{tag}O", inst.ns)
        inst.maps.nfx_port_cfg.put(L.u32(0), pc)
        try:
            yield inst
        finally:
            inst.reader.close()


@pytest.fixture(scope="module")
def nat():
    yield from _instance(NAT, "tpn", NAT_CFG)


@pytest.fixture(scope="module")
def ids():
    yield from _instance(IDS, "tpi", IdsConfig(scan_threshold=100))


@pytest.fixture(autouse=True)
def one_cpu():
    """NAT's port choice depends on the CPU: runs compared byte for byte stay on one."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    yield
    os.sched_setaffinity(0, before)


def fresh(nf):
    state = ("nat_fwd", "nat_rev", "nat_ports", "nat_hosts", "nat_cursor") if nf.kind == "nat" else \
            ("ids_flows", "ids_hosts", "ids_hostports", "ids_global")
    for m in state + ("nfx_marks", "nfx_stats", "nfx_filters", "nfx_gate_cfg", "nfx_drain"):
        nf.maps[m].clear()
    Gate(nf).reset_move()
    nf.configure(nf.cfg)
    nf.reader.poll_raw()


def run(nf, frame: bytes, side="in"):
    with netns.enter(nf.ns):
        v, out, _ = prog_test_run(nf.fn.fd, frame, ingress_ifindex=nf.idx[side])
    assert v != XDP_ABORTED
    return v, out


def eth():
    return Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb")


def traffic() -> list[tuple[bytes, str]]:
    """Both directions of a UDP and a TCP flow (replies to the NAT's public tuple are made on the fly)."""
    return [(raw(eth() / IP(src=H1, dst=H2) / UDP(sport=5000, dport=53) / Raw(b"q" * n)), "in") for n in (1, 20, 300)] + \
           [(raw(eth() / IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags=f) / Raw(b"t" * 9)), "in")
            for f in ("S", "A", "FA")]


def nat_reply(out: bytes) -> bytes:
    o = Ether(out)
    return raw(eth() / IP(src=o[IP].dst, dst=o[IP].src) / UDP(sport=o[UDP].dport, dport=o[UDP].sport) / Raw(b"r" * 33))


def play(nf, stamped: bool) -> tuple[list, list]:
    """The traffic through a fresh instance: (verdict, output) per packet, then its state."""
    fresh(nf)
    outs, count = [], 0
    for frame, side in traffic():
        count += 1
        outs.append(run(nf, stamp(frame, count) if stamped else frame, side))
    if nf.kind == "nat":
        reply = nat_reply(outs[0][1])
        outs.append(run(nf, stamp(reply, 1) if stamped else reply, "out"))
        state = [{k: v for k, v in m.items() if k != "idle_s"} for m in nf.mappings()]
    else:
        state = [{k: v for k, v in f.items() if k not in ("first_ns", "last_ns")} for f in nf.flows()]
        state += nf.hosts() + [nf.global_counters()]
    return outs, sorted(state, key=repr)


@pytest.mark.parametrize("kind", ["nat", "ids"])
def test_a_stamped_frame_leaves_and_counts_as_the_unstamped_one(kind, nat, ids):
    nf = nat if kind == "nat" else ids
    plain_out, plain_state = play(nf, stamped=False)
    assert nf.stats().get("r_stamped", 0) == 0
    stamped_out, stamped_state = play(nf, stamped=True)
    assert all(v == XDP_REDIRECT for v, _ in plain_out)
    assert stamped_out == plain_out            # verdicts and output frames, byte for byte
    assert stamped_state == plain_state        # byte counters without the trailer
    s = nf.stats()
    assert s.get("r_stamped", 0) == len(plain_out)
    assert (s.get("r_stamp_kept", 0), s.get("r_stamp_lost", 0), s.get("r_stamp_trim_fail", 0)) == (0, 0, 0)


def test_eight_bytes_past_the_datagram_without_the_magic_are_padding(ids):
    fresh(ids)
    f = raw(eth() / IP(src=H1, dst=H2) / UDP(sport=5000, dport=53) / Raw(b"x" * 10)) + bytes(8)
    v, out = run(ids, f)
    assert v == XDP_REDIRECT and len(out) == len(f) and ids.stats().get("r_stamped", 0) == 0
    # a trailer one byte further is no trailer either: it must end the frame
    v, out = run(ids, stamp(raw(eth() / IP(src=H1, dst=H2) / UDP(sport=5000, dport=53)), 3) + b"\0")
    assert len(out) == 14 + 28 + 9 and ids.stats().get("r_stamped", 0) == 0


def _release(nf, hold_slot_frame: bytes | None = None):
    """One packet through the release path (ingress = the release veth), plain test run."""
    with netns.enter(nf.ns):
        v, out, _ = prog_test_run(nf.fn.fd, FRAME0, ingress_ifindex=nf.release_idx)
    assert v != XDP_ABORTED
    return v, out


def test_a_held_packet_keeps_its_stamp_until_released_and_processed(nat):
    fresh(nat)
    g = Gate(nat)
    key = make_key(H1, H2, 5000, 53, "udp")
    frame = raw(eth() / IP(src=H1, dst=H2) / UDP(sport=5000, dport=53) / Raw(b"h" * 40))
    g.set_move_cfg(epoch=7, hold=1)
    g.mark([key], L.Action.BUFFER, epoch=7)
    head = g.hold_state().head
    assert run(nat, stamp(frame, 41))[0] == XDP_DROP
    slot = nat.maps.nfx_hold.get(L.u32(head % L.HOLD_SLOTS))
    assert bytes(slot.data[:slot.len]) == stamp(frame, 41)       # held with its trailer
    s = nat.stats()
    assert (s.get("r_stamped"), s.get("r_stamp_kept"), s.get("r_buffered")) == (1, 1, 1)
    assert nat.maps.nat_fwd.get(key) is None                     # not processed yet
    # released: processed here with its stamp, which its record carries; it leaves without it
    g.set_share(True)
    v, out = _release(nat)
    assert v == XDP_REDIRECT
    o = Ether(out)
    assert len(out) == len(frame) and o[IP].dst == H2 and out.endswith(b"h" * 40)
    [rec] = nat.reader.poll_raw()
    assert S.stamp_of(rec) == (bytes(key), 41)
    assert nat.maps.nat_fwd.get(key).bytes == len(frame)
    s = nat.stats()
    assert (s.get("r_stamped"), s.get("r_released"), s.get("r_shared")) == (2, 1, 1)
    g.set_move_cfg(hold=0)


def test_a_buffered_packet_reaches_the_agent_with_its_stamp(ids):
    fresh(ids)
    g = Gate(ids)
    key = make_key(H1, H2, 5001, 53, "udp")
    frame = raw(eth() / IP(src=H1, dst=H2) / UDP(sport=5001, dport=53) / Raw(b"b" * 12))
    g.mark([key], L.Action.BUFFER, epoch=3)
    ring = g.ring()
    ring.poll(0)
    assert run(ids, stamp(frame, 9))[0] == XDP_DROP
    [p] = ring.poll(0)
    assert p.data == stamp(frame, 9)
    # passed on to a peer: the frame goes with its trailer too
    g.mark([key], L.Action.REDIRECT, epoch=3, peer=2)
    before = ids.stats().get("r_stamp_kept", 0)
    run(ids, stamp(frame, 10))          # slot 2 holds no peer here: the redirect fails, the trailer was back
    assert ids.stats().get("r_stamp_kept", 0) == before + 1


def test_share_writes_a_record_per_processed_packet_led_by_its_stamp(nat):
    fresh(nat)
    g = Gate(nat)
    frames = [f for f, side in traffic()]
    assert run(nat, frames[0])[0] == XDP_REDIRECT
    assert nat.reader.poll_raw() == []              # share off, no mark: no record
    snap = list(ops.export(nat, STATE))
    assert g.set_share(True).share == 1 and g.sharing()
    recs = []
    for i, f in enumerate(frames[1:], 2):
        v, _ = run(nat, stamp(f, i) if i % 2 else f)   # every other one stamped
        assert v == XDP_REDIRECT
        got = nat.reader.poll_raw()
        assert len(got) == 1
        recs += got
        ups = S.parse_record(got[0])
        k = Ether(f)
        key = make_key(k[IP].src, k[IP].dst, k.sport, k.dport, k[IP].proto)
        assert S.stamp_of(ups) == (bytes(key), i if i % 2 else 0)
        assert ups[0] == S.Update(L.StTable.STAMP, L.StOp.SET, bytes(key), 1, (i if i % 2 else 0,), 0)
        assert ups[1:] and all(u.table != L.StTable.STAMP for u in ups[1:])
        assert S.to_dict(ups[0])["table"] == "stamp" and S.from_dict(S.to_dict(ups[0])) == ups[0]
    s = nat.stats()
    assert s.get("r_shared") == len(frames) - 1 and s.get("r_statelet") == len(frames) - 1
    # replay skips the STAMP statelets: the snapshot plus the records is the live state
    live = list(ops.export(nat, STATE))
    rep = R.apply(R.Tables.from_chunks(snap, "nat"), recs)
    assert rep["orphans"] == 0
    assert ops.diff(rep["tables"].chunks(), live)["same"]
    assert R.apply_slow(R.Tables.from_chunks(snap, "nat"), recs)["orphans"] == 0
    g.set_share(False)
    assert run(nat, frames[1])[0] == XDP_REDIRECT and nat.reader.poll_raw() == []


def test_slims_statelet_packets_are_left_alone_unless_stamped_or_shared(ids):
    """A STATELET filter's packets write what they wrote before; a stamp, or sharing, adds the
    STAMP lead (sharing does not count them as upgraded: they were mirrored anyway)."""
    fresh(ids)
    g = Gate(ids)
    g.put_filter(0, L.Filter(action=int(L.Action.STATELET), flags=L.FILTER_USED))
    f = raw(eth() / IP(src=H1, dst=H2) / UDP(sport=7000, dport=53) / Raw(b"s" * 5))
    run(ids, f)
    [rec] = ids.reader.poll_raw()
    assert S.stamp_of(rec) is None and ids.stats().get("r_shared", 0) == 0
    run(ids, stamp(f, 2))
    [rec] = ids.reader.poll_raw()
    assert S.stamp_of(rec) == (bytes(make_key(H1, H2, 7000, 53, "udp")), 2)
    g.set_share(True)                               # share upgrades PROCESS only
    run(ids, f)
    [rec] = ids.reader.poll_raw()
    assert S.stamp_of(rec) == (bytes(make_key(H1, H2, 7000, 53, "udp")), 0)
    assert ids.stats().get("r_shared", 0) == 0
    g.put_filter(0, L.Filter())                     # and without the filter it does
    run(ids, f)
    [rec] = ids.reader.poll_raw()
    assert S.stamp_of(rec)[1] == 0 and ids.stats().get("r_shared", 0) == 1
