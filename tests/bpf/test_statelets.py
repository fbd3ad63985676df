"""Statelets through BPF_PROG_TEST_RUN: a mirrored packet writes exactly the statelets of the
entries it changed, field by field equal to the maps after that packet; unmirrored packets write
none; a full ring is counted; a wildcard STATELET filter catches new flows; and replaying the
stream onto a snapshot (or onto maps) reproduces the live state exactly, idempotently."""
import json
import subprocess
import sys
import time

import pytest
from scapy.all import Ether, ICMP, IP, Raw, TCP, UDP, raw

from nfx import layout as L
from nfx.errors import BadInput
from nfx.flows import be_to_ip, be_to_port, key_fields, make_key
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run
from nfx.nfs.ids import IDS, IdsConfig
from nfx.nfs.nat import NAT, NatConfig
from nfx.paths import REPO
from nfx.state import ops
from nfx.state import replay as R
from nfx.state import statelets as S
from tests.scratch import scratch_nf

XDP_ABORTED, XDP_DROP, XDP_REDIRECT = 0, 1, 4
H1, H2 = "10.0.1.2", "10.0.2.2"
SET, DEL = L.StOp.SET, L.StOp.DEL
STATE = ("per-flow", "multi-flow")
NAT_CFG = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.101", port_lo=20000, port_hi=20999)


def _instance(cls, tag, cfg):
    # one page: room for ~70 records, so the ring-full test is quick
    with scratch_nf(cls, tag, cfg, max_flows=4096, defines={"NFX_STATELET_RING_PAGES": 1}) as inst:
        inst.cfg = cfg
        inst.reader = S.StateletReader(inst)
        try:
            yield inst
        finally:
            inst.reader.close()


@pytest.fixture(scope="module")
def nat():
    yield from _instance(NAT, "tsn", NAT_CFG)


@pytest.fixture(scope="module")
def ids():
    yield from _instance(IDS, "tsi", IdsConfig(scan_threshold=3))


def _fresh(nf, state_maps, cfg):
    for m in state_maps + ("nfx_marks", "nfx_stats", "nfx_filters", "nfx_gate_cfg"):
        nf.maps[m].clear()
    nf.configure(cfg)
    nf.reader.poll_raw()               # whatever an earlier test left in the ring


def run(nf, frame, side="in"):
    with netns.enter(nf.ns):
        v, out, _ = prog_test_run(nf.fn.fd, raw(frame), ingress_ifindex=nf.idx[side])
    assert v != XDP_ABORTED
    return v, Ether(out)


def eth():
    return Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb")


def udp(sport=5000, dport=53, src=H1, dst=H2, payload=b"q" * 20):
    return eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)


def one_record(nf) -> list[S.Update]:
    recs = nf.reader.poll_raw()
    assert len(recs) == 1, recs
    return S.parse_record(recs[0])


def no_record(nf):
    assert nf.reader.poll_raw() == []


def match_all(action=L.Action.STATELET) -> L.Filter:
    return L.Filter(action=int(action), flags=L.FILTER_USED)        # masks 0: every flow


def check_entry(nf, u: S.Update, value):
    """Every field the statelet carries equals the map entry now."""
    s = S.SCHEMAS[u.table]
    assert value is not None, f"{s.name} has no entry for the statelet's key"
    for name, v in S.fields_of(u).items():
        if name == "value":
            want = key_fields(value) if isinstance(value, L.FlowKey) else value.value
        else:
            want = getattr(value, name)
            if isinstance(want, L.FlowKey):
                want = key_fields(want)
        assert v == want, f"{s.name}.{name}: statelet {v}, map {want}"


def stat(nf, name):
    return nf.stats().get(name, 0)


def bit(*fields):
    return sum(1 << int(f) for f in fields)


NAT_TOUCH = bit(L.StfNat.PKTS, L.StfNat.BYTES, L.StfNat.LAST_SEEN_NS)


# ---- NAT -------------------------------------------------------------------------------------------
@pytest.fixture()
def fnat(nat):
    _fresh(nat, ("nat_fwd", "nat_rev", "nat_ports"), NAT_CFG)
    return nat


def test_nat_mirrored_flow_statelets_match_the_maps(fnat):
    nat = fnat
    key = make_key(H1, H2, 5000, 53, "udp")
    nat.gate.mark([key], L.Action.STATELET)
    sizes = []
    # 1: a new connection: its reverse entry and port allocation, then the forward entry, whole
    p = udp()
    assert run(nat, p)[0] == XDP_REDIRECT
    sizes.append(len(p))
    rev_u, port_u, fwd_u = one_record(nat)
    assert (fwd_u.table, fwd_u.op, fwd_u.key, fwd_u.mask) == (L.StTable.NAT_FWD, SET, bytes(key), 0x3f)
    fwd = nat.maps["nat_fwd"].get(key)
    check_entry(nat, fwd_u, fwd)
    assert fwd.pkts == 1 and fwd.bytes == len(p)
    assert fwd_u.inc == rev_u.inc == S.inc_tag(fwd.created_ns) and port_u.inc == 0
    assert (rev_u.table, rev_u.op, rev_u.key, rev_u.mask) == (L.StTable.NAT_REV, SET, bytes(fwd.peer), 0x3f)
    check_entry(nat, rev_u, nat.maps["nat_rev"].get(fwd.peer))
    pk = L.NatPort(addr=fwd.peer.daddr, port=fwd.peer.dport, proto=17)
    assert (port_u.table, port_u.op, port_u.key, port_u.mask) == (L.StTable.NAT_PORTS, SET, bytes(pk), 1)
    check_entry(nat, port_u, nat.maps["nat_ports"].get(pk))
    # 2..4: known flow: pkts, bytes, last_seen only
    for i in range(3):
        p = udp(payload=b"x" * (10 + i))
        run(nat, p)
        sizes.append(len(p))
        [u] = one_record(nat)
        assert (u.table, u.op, u.key, u.mask) == (L.StTable.NAT_FWD, SET, bytes(key), NAT_TOUCH)
        e = nat.maps["nat_fwd"].get(key)
        check_entry(nat, u, e)
        assert e.pkts == 2 + i
    # the reply is another key: not mirrored until it is marked too
    rk = fwd.peer                                   # the key of return packets
    reply = eth() / IP(src=H2, dst=be_to_ip(rk.daddr)) / UDP(sport=53, dport=be_to_port(rk.dport)) / Raw(b"a")
    assert run(nat, reply, "out")[0] == XDP_REDIRECT
    no_record(nat)
    nat.gate.mark([rk], L.Action.STATELET)
    run(nat, reply, "out")
    sizes.append(len(reply))
    [u] = one_record(nat)
    assert (u.table, u.key, u.mask) == (L.StTable.NAT_REV, bytes(rk), NAT_TOUCH)
    check_entry(nat, u, nat.maps["nat_rev"].get(rk))
    assert nat.maps["nat_rev"].get(rk).pkts == 2
    # the counters: one record per mirrored packet, bytes as read, packet bytes as sent
    sg = R.sigma(nat)
    assert sg["records"] == 5 and sg["dropped"] == 0
    assert sg["statelet_bytes"] == nat.reader.bytes
    assert sg["packet_bytes"] == sum(sizes)
    assert sg["statelet_bytes"] == (10 + 4 + 10) * 8 + 4 * 6 * 8     # creation (rev, port, fwd), then 4 touches
    assert 0 < sg["sigma"] == sg["statelet_bytes"] / sum(sizes)


def test_nat_tcp_flags_only_when_they_grow(fnat):
    nat = fnat
    key = make_key(H1, H2, 40000, 80, "tcp")
    nat.gate.mark([key], L.Action.STATELET)
    run(nat, eth() / IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags="S"))
    fwd_u = one_record(nat)[-1]
    assert fwd_u.mask == 0x3f and S.fields_of(fwd_u)["tcp_flags"] == L.TCP_SYN
    run(nat, eth() / IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags="A"))
    [u] = one_record(nat)
    assert u.mask == NAT_TOUCH | bit(L.StfNat.TCP_FLAGS)
    check_entry(nat, u, nat.maps["nat_fwd"].get(key))
    assert S.fields_of(u)["tcp_flags"] == L.TCP_SYN | L.TCP_ACK
    run(nat, eth() / IP(src=H1, dst=H2) / TCP(sport=40000, dport=80, flags="A"))
    [u] = one_record(nat)
    assert u.mask == NAT_TOUCH


def test_nat_unmirrored_flows_write_nothing(fnat):
    nat = fnat
    nat.gate.mark([make_key(H1, H2, 7777, 53, "udp")], L.Action.STATELET)   # some other flow
    nat.gate.mark([make_key(H1, H2, 5001, 53, "udp")], L.Action.PROCESS)
    for sport in (5000, 5001, 5000):
        assert run(nat, udp(sport=sport))[0] == XDP_REDIRECT
    run(nat, eth() / IP(src=H1, dst=H2) / ICMP(type=8, id=5, seq=1))
    no_record(nat)
    assert stat(nat, "r_statelet") == 0 and stat(nat, "r_statelet_pkt_bytes") == 0
    assert len(nat.maps["nat_fwd"]) == 3


def test_nat_mirrored_packet_that_changes_nothing_writes_nothing(fnat):
    nat = fnat
    nat.gate.put_filter(0, match_all())
    assert run(nat, eth() / IP(src=H2, dst="10.0.2.100") / UDP(sport=53, dport=20001), "out")[0] == XDP_DROP
    no_record(nat)
    assert stat(nat, "r_statelet") == 0 and stat(nat, "r_statelet_pkt_bytes") > 0


def test_wildcard_filter_catches_new_flows(fnat):
    nat = fnat
    nat.gate.put_filter(0, match_all())
    for sport in range(6000, 6005):
        run(nat, udp(sport=sport))
        ups = one_record(nat)
        assert [(u.table, u.op) for u in ups] == [(L.StTable.NAT_REV, SET), (L.StTable.NAT_PORTS, SET),
                                                  (L.StTable.NAT_FWD, SET)]
        assert ups[-1].key == bytes(make_key(H1, H2, sport, 53, "udp"))
    # a PROCESS filter in front of it: not mirrored
    nat.gate.put_filter(0, L.Filter(saddr=make_key(H1, H2, 0, 0, 17).saddr, smask=0xFFFFFFFF,
                               action=int(L.Action.PROCESS), flags=L.FILTER_USED))
    nat.gate.put_filter(1, match_all())
    run(nat, udp(sport=6100))
    no_record(nat)
    run(nat, udp(src="10.0.1.9", sport=6100))
    assert one_record(nat)[-1].key == bytes(make_key("10.0.1.9", H2, 6100, 53, "udp"))


def test_nat_eviction_and_port_reclaim_are_statelets(fnat):
    nat = fnat
    short = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.100", port_lo=30000, port_hi=30000,
                      timeouts_s={"udp": 0.05, "tcp": 0.05, "tcp_closed": 0.05, "icmp": 0.05})
    nat.configure(short)
    nat.gate.put_filter(0, match_all())
    snap = R.Tables.from_nf(nat)
    stream = []
    a, b = make_key(H1, H2, 1, 9, "udp"), make_key(H1, H2, 2, 9, "udp")
    assert run(nat, udp(sport=1, dport=9))[0] == XDP_REDIRECT
    stream += nat.reader.poll_raw()
    a_out = nat.maps["nat_fwd"].get(a).peer
    time.sleep(0.1)
    # b takes the only port from idle a: a's two entries go, the port changes owner
    assert run(nat, udp(sport=2, dport=9))[0] == XDP_REDIRECT
    recs = nat.reader.poll_raw()
    stream += recs
    ups = S.parse_record(recs[0])
    assert [(u.table, u.op, u.key) for u in ups[:2]] == [(L.StTable.NAT_REV, DEL, bytes(a_out)),
                                                         (L.StTable.NAT_FWD, DEL, bytes(a))]
    assert [(u.table, u.op) for u in ups[2:]] == [(L.StTable.NAT_REV, SET), (L.StTable.NAT_PORTS, SET),
                                                  (L.StTable.NAT_FWD, SET)]
    assert S.fields_of(ups[3])["value"] == key_fields(b)
    time.sleep(0.1)
    # b again, idle: its own connection is evicted (port, reverse, forward) and made anew
    assert run(nat, udp(sport=2, dport=9))[0] == XDP_REDIRECT
    recs = nat.reader.poll_raw()
    stream += recs
    ups = S.parse_record(recs[0])
    assert [(u.table, u.op) for u in ups] == [
        (L.StTable.NAT_PORTS, DEL), (L.StTable.NAT_REV, DEL), (L.StTable.NAT_FWD, DEL),
        (L.StTable.NAT_REV, SET), (L.StTable.NAT_PORTS, SET), (L.StTable.NAT_FWD, SET)]
    assert nat.maps["nat_fwd"].get(b).pkts == 1
    live = list(ops.export(nat, STATE))
    rep = R.apply(snap, stream)
    assert rep["orphans"] == 0 and rep["stale"] == 0
    assert ops.diff(snap.chunks(), live)["same"]
    # b's first connection's statelets land on its second (same keys, one port): skipped
    newest = R.Tables.from_chunks(live)
    rep = R.apply(newest, stream[1:2])
    # (a's deletion names a's connection, not b's second one under the same reverse key)
    assert (rep["stale"], rep["deleted"]) == (3, 0) and ops.diff(newest.chunks(), live)["same"], rep


def _mixed_traffic(nat, n_rounds=3):
    """New flows, repeats, replies, TCP flags, ICMP: every kind of NAT update."""
    for r in range(n_rounds):
        for i in range(6):
            run(nat, udp(src=f"10.0.1.{2 + i % 3}", sport=7000 + i, payload=b"r" * (r + i)))
        run(nat, eth() / IP(src=H1, dst=H2) / TCP(sport=41000, dport=80, flags="SFA"[r]))
        run(nat, eth() / IP(src=H1, dst=H2) / ICMP(type=8, id=900 + r, seq=1) / Raw(b"ping"))
        n, keys, vals = nat.maps["nat_fwd"].export()
        for j in range(n):
            pe = vals[j].peer
            proto = keys[j].proto
            l4 = (UDP(sport=be_to_port(pe.sport), dport=be_to_port(pe.dport)) if proto == 17 else
                  TCP(sport=be_to_port(pe.sport), dport=be_to_port(pe.dport), flags="A") if proto == 6 else
                  ICMP(type=0, id=be_to_port(pe.dport), seq=1))
            run(nat, eth() / IP(src=be_to_ip(pe.saddr), dst=be_to_ip(pe.daddr)) / l4 / Raw(b"back"), "out")


def test_nat_replay_onto_snapshots_and_maps_is_exact_and_idempotent(fnat):
    nat = fnat
    _mixed_traffic(nat, 1)                          # state from before mirroring began
    nat.reader.poll_raw()
    nat.gate.put_filter(0, L.Filter(action=int(L.Action.STATELET), flags=L.FILTER_USED))
    early = R.Tables.from_nf(nat)
    early_chunks = early.chunks()                   # a copy: apply() changes `early`
    stream = []
    _mixed_traffic(nat, 2)
    stream += nat.reader.poll_raw()
    middle = list(ops.export(nat, STATE))           # a later snapshot: older statelets must not regress it
    _mixed_traffic(nat, 2)
    stream += nat.reader.poll_raw()
    assert stat(nat, "r_statelet_ring_full") == 0 and stat(nat, "r_statelet") == len(stream)
    live = list(ops.export(nat, STATE))
    assert not ops.diff(early.chunks(), live)["same"]          # the test can fail
    rep = R.apply(early, stream)
    assert rep["orphans"] == 0 and rep["records"] == len(stream)
    assert ops.diff(early.chunks(), live)["same"], ops.diff(early.chunks(), live)
    again = R.apply(early, stream)                             # idempotent
    assert again["applied"] < again["statelets"]               # some skipped as stale
    assert ops.diff(early.chunks(), live)["same"]
    newest = R.Tables.from_chunks(live)                        # old statelets never regress state
    rep = R.apply(newest, stream[:len(stream) // 2])
    assert rep["stale"] > 0 and ops.diff(newest.chunks(), live)["same"]
    rep = R.apply(middle, stream)                              # a list of chunks works too
    assert rep["stale"] > 0
    assert ops.diff(rep["tables"].chunks(), live)["same"]
    # and straight onto an instance's maps: wipe, import the early snapshot, replay
    for m in ("nat_fwd", "nat_rev", "nat_ports"):
        nat.maps[m].clear()
    assert not ops.put(nat, early_chunks)["failed"]
    rep = R.apply(nat, stream)
    assert rep["orphans"] == 0
    assert ops.diff(list(ops.export(nat, STATE)), live)["same"]


def test_dicts_round_trip(fnat):
    nat = fnat
    nat.gate.put_filter(0, match_all())
    run(nat, udp())
    run(nat, eth() / IP(src=H1, dst=H2) / TCP(sport=40001, dport=80, flags="S"))
    recs = nat.reader.poll_raw()
    ups = [u for r in recs for u in S.parse_record(r)]
    dicts = [S.to_dict(u) for u in ups]
    assert [S.from_dict(d) for d in dicts] == ups
    assert b"".join(S.encode(u) for u in S.parse_record(recs[0])) == recs[0]
    fwd = [d for d in dicts if d["table"] == "nat_fwd"][0]
    assert fwd["key"] == {"src": H1, "dst": H2, "sport": 5000, "dport": 53, "proto": "udp"}
    assert fwd["fields"]["pkts"] == 1 and fwd["fields"]["peer"]["src"] == H2
    import json
    json.dumps(dicts)
    with pytest.raises(BadInput):
        S.parse_record(recs[0][:-8])


def test_ring_full_is_counted(fnat):
    nat = fnat
    nat.gate.put_filter(0, match_all())
    run(nat, udp())
    n = 200                                      # 56 ring bytes each: a 4 KiB ring holds ~73
    for _ in range(n):
        run(nat, udp())
    written, full = stat(nat, "r_statelet"), stat(nat, "r_statelet_ring_full")
    assert written + full == n + 1 and full > 100
    got = nat.reader.poll_raw()
    assert len(got) == written
    assert R.sigma(nat)["dropped"] == full
    run(nat, udp())                              # room again
    assert len(nat.reader.poll_raw()) == 1


READER = """
import json, sys
from pathlib import Path
from nfx.nfs.nat import NAT
from nfx.state.statelets import StateletReader
r = StateletReader(NAT.open("tsn0", Path(sys.argv[1])))
print("ready", flush=True)
got = []
for _ in range(50):
    got += r.poll(100)
    if got:
        break
print(json.dumps(got), flush=True)
"""


def test_reader_in_another_process_from_pins(fnat):
    nat = fnat
    nat.reader.close()                       # one consumer per ring
    try:
        proc = subprocess.Popen([sys.executable, "-c", READER, str(nat.pd)], stdout=subprocess.PIPE, text=True,
                                cwd=str(REPO))
        try:
            assert proc.stdout.readline().strip() == "ready"
            nat.gate.put_filter(0, match_all())
            run(nat, udp(sport=5555))
            ds = json.loads(proc.stdout.readline())
        finally:
            proc.kill()
            proc.wait()
        assert [d["table"] for d in ds] == ["nat_rev", "nat_ports", "nat_fwd"]
        assert {d["seq"] for d in ds} == {0}
        assert ds[-1]["key"]["sport"] == 5555 and ds[-1]["fields"]["pkts"] == 1
        assert S.from_dict(ds[-1]).mask == 0x3f
    finally:
        nat.reader = S.StateletReader(nat)


# ---- IDS -------------------------------------------------------------------------------------------
IDS_STATE = ("ids_flows", "ids_hosts", "ids_hostports", "ids_global", "ids_sig_hits")
FLOW_TOUCH = bit(L.StfIdsFlow.PKTS, L.StfIdsFlow.BYTES, L.StfIdsFlow.LAST_NS)
HOST_TOUCH = bit(L.StfIdsHost.PKTS, L.StfIdsHost.BYTES)


@pytest.fixture()
def fids(ids):
    _fresh(ids, IDS_STATE, ids.cfg)
    for m in ("ids_sigs",):
        ids.maps[m].clear()
    ids.configure(ids.cfg)
    return ids


def host_key(addr):
    return L.u32(make_key(addr, addr, 0, 0, 17).saddr)


def hp_key(addr, dport, proto=17, token=False):
    k = make_key(addr, addr, 0, dport, proto)
    return L.IdsHostPort(saddr=k.saddr, dport=0 if token else k.dport, proto=0 if token else proto, pad=int(token))


def check_ids(ids, ups, key):
    for u in ups:
        if u.table == L.StTable.IDS_FLOWS:
            check_entry(ids, u, ids.maps["ids_flows"].get(L.FlowKey.from_buffer_copy(u.key)))
        elif u.table == L.StTable.IDS_HOSTS:
            check_entry(ids, u, ids.maps["ids_hosts"].get(L.u32.from_buffer_copy(u.key)))
        else:
            check_entry(ids, u, ids.maps["ids_hostports"].get(L.IdsHostPort.from_buffer_copy(u.key)))


def test_ids_mirrored_flow_statelets_match_the_maps(fids):
    ids = fids
    ids.add_signature(77, b"EVIL", offset=0, proto="udp")
    ids.gate.put_filter(0, match_all())
    key = make_key(H1, H2, 5000, 53, "udp")
    # a new flow from a new host: flow and host whole, the port joins the seen-set
    run(ids, udp())
    ups = one_record(ids)
    assert [(u.table, u.op, u.mask) for u in ups] == [
        (L.StTable.IDS_FLOWS, SET, 0x3f), (L.StTable.IDS_HOSTS, SET, 0x3f), (L.StTable.IDS_HOSTPORTS, SET, 1)]
    assert ups[0].key == bytes(key) and ups[1].key == bytes(host_key(H1))
    assert ups[0].inc == S.inc_tag(ids.maps["ids_flows"].get(key).first_ns) and ups[1].inc == 0
    assert ups[2].key == bytes(hp_key(H1, 53))
    check_ids(ids, ups, key)
    # the same flow: counters only
    run(ids, udp(payload=b"more"))
    ups = one_record(ids)
    assert [(u.table, u.mask) for u in ups] == [(L.StTable.IDS_FLOWS, FLOW_TOUCH), (L.StTable.IDS_HOSTS, HOST_TOUCH)]
    check_ids(ids, ups, key)
    assert S.fields_of(ups[0])["pkts"] == 2
    # a signature hit: sig_hits and the host's alerts
    run(ids, udp(payload=b"EVIL!"))
    ups = one_record(ids)
    assert [(u.table, u.mask) for u in ups] == [
        (L.StTable.IDS_FLOWS, FLOW_TOUCH | bit(L.StfIdsFlow.SIG_HITS)),
        (L.StTable.IDS_HOSTS, HOST_TOUCH | bit(L.StfIdsHost.ALERTS))]
    check_ids(ids, ups, key)
    # new flows of the same host: flows and dports grow; the third port crosses the scan threshold
    for dport, scan in ((54, False), (55, True)):
        run(ids, udp(dport=dport))
        ups = one_record(ids)
        want_host = HOST_TOUCH | bit(L.StfIdsHost.FLOWS, L.StfIdsHost.DPORTS)
        if scan:
            want_host |= bit(L.StfIdsHost.ALERTS, L.StfIdsHost.SCAN_ALERTED)
        assert [(u.table, u.mask) for u in ups[:2]] == [(L.StTable.IDS_FLOWS, 0x3f), (L.StTable.IDS_HOSTS, want_host)]
        assert [u.key for u in ups[2:]] == [bytes(hp_key(H1, dport))] + ([bytes(hp_key(H1, 0, token=True))] if scan else [])
        check_ids(ids, ups, key)
    assert ids.maps["ids_hosts"].get(host_key(H1)).scan_alerted == 1
    # TCP flags on a new then known flow
    run(ids, eth() / IP(src=H1, dst=H2) / TCP(sport=1, dport=80, flags="S"))
    one_record(ids)
    run(ids, eth() / IP(src=H1, dst=H2) / TCP(sport=1, dport=80, flags="A"))
    ups = one_record(ids)
    assert ups[0].mask == FLOW_TOUCH | bit(L.StfIdsFlow.TCP_FLAGS)
    check_ids(ids, ups, key)
    sg = R.sigma(ids)
    assert sg["records"] == 7 and sg["dropped"] == 0 and sg["statelet_bytes"] == ids.reader.bytes


def test_ids_unmirrored_flows_write_nothing(fids):
    ids = fids
    ids.gate.mark([make_key(H1, H2, 1234, 53, "udp")], L.Action.STATELET)
    for dport in (53, 54, 55, 56):
        assert run(ids, udp(dport=dport))[0] == XDP_REDIRECT
    no_record(ids)
    assert stat(ids, "r_statelet") == 0
    run(ids, udp(sport=1234))            # a new flow of a known host, to a port already seen
    ups = one_record(ids)
    assert [(u.table, u.mask) for u in ups] == [(L.StTable.IDS_FLOWS, 0x3f),
                                                (L.StTable.IDS_HOSTS, HOST_TOUCH | bit(L.StfIdsHost.FLOWS))]
    check_ids(ids, ups, None)


def test_ids_replay_is_exact(fids):
    ids = fids
    ids.add_signature(5, b"BAD", proto="udp")
    for i in range(4):
        run(ids, udp(src=f"10.0.1.{2 + i}", dport=60 + i))
    ids.gate.put_filter(0, match_all())
    snap = R.Tables.from_nf(ids)
    stream = []
    for r in range(3):
        for i in range(6):
            run(ids, udp(src=f"10.0.1.{2 + i % 4}", dport=60 + i + r, payload=b"BAD" if i == r else b"ok"))
        run(ids, eth() / IP(src=H2, dst=H1) / TCP(sport=80, dport=1000 + r, flags="SA"[r % 2]))
        stream += ids.reader.poll_raw()
    live = list(ops.export(ids, STATE))
    assert not ops.diff(snap.chunks(), live)["same"]
    rep = R.apply(snap, stream)
    assert rep["orphans"] == 0 and rep["stale"] == 0
    assert ops.diff(snap.chunks(), live)["same"], ops.diff(snap.chunks(), live)
    R.apply(snap, stream)
    assert ops.diff(snap.chunks(), live)["same"]
