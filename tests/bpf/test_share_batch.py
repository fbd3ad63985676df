"""Sharing in batches at the NF (nfx_gate_cfg.share_batch, issue 13), through BPF_PROG_TEST_RUN:
with share_batch = S a processed packet writes a statelet record only when its stamp is a
multiple of S, when it came unstamped, or when the NF makes an entry (a NAT mapping, an IDS
flow or host); the others write none and are counted r_share_quiet. A boundary record carries
every field of the entries it touches, so the records alone replay to the state the instance
had at that packet."""
import time

import pytest
from scapy.all import IP, Raw, UDP, raw

from nfx import layout as L
from nfx.flows import make_key
from nfx.gate import Gate
from nfx.state import ops
from nfx.state import replay as R
from nfx.state import statelets as S
from nfx.state.sweep import SharedLog
from tests.bpf.test_stamp_nf import (H1, H2, IdsConfig, NAT, NAT_CFG, IDS, XDP_REDIRECT, _instance, eth,
                                     fresh, one_cpu, run, stamp)   # noqa: F401 (one_cpu: an autouse fixture)

STATE = ("per-flow", "multi-flow")
BATCH = 4


@pytest.fixture(scope="module")
def nat():
    yield from _instance(NAT, "tbn", NAT_CFG)


@pytest.fixture(scope="module")
def ids():
    yield from _instance(IDS, "tbi", IdsConfig(scan_threshold=100))


def _udp(sport: int, dport: int = 53, n: int = 10) -> bytes:
    return raw(eth() / IP(src=H1, dst=H2) / UDP(sport=sport, dport=dport) / Raw(b"u" * n))


def _values(nf, table: str, key) -> tuple:
    """An entry's whole value as a full-mask statelet carries it."""
    s = S.BY_NAME[table]
    v = nf.maps[table].get(key)
    assert v is not None
    return S.entry_update(s, bytes(key), v).vals


def test_nat_writes_records_at_boundaries_and_creation_only(nat):
    fresh(nat)
    g = Gate(nat)
    assert g.set_share(True, BATCH).share_batch == BATCH
    key = make_key(H1, H2, 6000, 53, "udp")
    f = _udp(6000)
    got = {}
    for n in range(1, 10):
        assert run(nat, stamp(f, n))[0] == XDP_REDIRECT
        recs = nat.reader.poll_raw()
        if recs:
            [got[n]] = recs
            if n == 8:
                live = list(ops.export(nat, STATE))
                fwd8 = _values(nat, "nat_fwd", key)
    # the first (it made the mapping) and every BATCH-th
    assert sorted(got) == [1, 4, 8]
    s = nat.stats()
    assert (s.get("r_shared"), s.get("r_statelet"), s.get("r_share_quiet")) == (9, 3, 6)
    first = S.parse_record(got[1])
    assert {S.SCHEMAS[u.table].name for u in first if u.table in S.SCHEMAS} == {"nat_fwd", "nat_rev", "nat_ports"}
    # a boundary record: the STAMP, then the whole nat_fwd entry (every field, absolute)
    b8 = S.parse_record(got[8])
    assert S.stamp_of(b8) == (bytes(key), 8)
    [fwd] = [u for u in b8 if u.table == L.StTable.NAT_FWD]
    sch = S.SCHEMAS[int(L.StTable.NAT_FWD)]
    assert fwd.mask == sch.full_mask and fwd.vals == fwd8
    assert S.fields_of(fwd)["pkts"] == 8 and S.fields_of(fwd)["bytes"] == 8 * len(f)
    # the records alone (no snapshot: sharing began with the flow) give the state at packet 8
    rep = R.apply(R.Tables("nat"), [got[n] for n in sorted(got)])
    assert rep["orphans"] == 0
    assert ops.diff(rep["tables"].chunks(), [c for c in live if c.table in S.BY_NAME])["same"]
    # an unstamped packet always writes (nothing else tells its batches apart)
    run(nat, f)
    [rec] = nat.reader.poll_raw()
    assert S.stamp_of(rec) == (bytes(key), 0)
    # share_batch 1: every packet, as before batches
    g.set_share(True, 1)
    for n in (10, 11):
        run(nat, stamp(f, n))
        assert len(nat.reader.poll_raw()) == 1
    g.set_share(False)
    run(nat, stamp(f, 12))
    assert nat.reader.poll_raw() == [] and nat.stats().get("r_share_quiet") == 6


def test_ids_writes_a_flow_and_host_creation_and_whole_values_at_boundaries(ids):
    fresh(ids)
    Gate(ids).set_share(True, BATCH)
    a, b = make_key(H1, H2, 6100, 53, "udp"), make_key(H1, H2, 6101, 54, "udp")
    recs = {}
    for n in range(1, 6):
        run(ids, stamp(_udp(6100), n))
        recs[("a", n)] = ids.reader.poll_raw()
        if n == 4:
            live = list(ops.export(ids, STATE))
            host4 = _values(ids, "ids_hosts", L.u32(a.saddr))
            flow4 = _values(ids, "ids_flows", a)
    # flow b from the same host, its first packet at a stamp that is no boundary: it makes an entry
    run(ids, stamp(_udp(6101, 54), 3))
    recs[("b", 3)] = ids.reader.poll_raw()
    wrote = sorted(k for k, v in recs.items() if v)
    assert wrote == [("a", 1), ("a", 4), ("b", 3)]
    assert ids.stats().get("r_share_quiet") == 3
    [r4] = recs[("a", 4)]
    ups = S.parse_record(r4)
    [fl] = [u for u in ups if u.table == L.StTable.IDS_FLOWS]
    [ho] = [u for u in ups if u.table == L.StTable.IDS_HOSTS]
    assert fl.mask == S.SCHEMAS[int(L.StTable.IDS_FLOWS)].full_mask and fl.vals == flow4
    assert ho.mask == S.SCHEMAS[int(L.StTable.IDS_HOSTS)].full_mask and ho.vals == host4
    assert S.fields_of(ho)["pkts"] == 4 and S.fields_of(fl)["pkts"] == 4
    # flow a's records alone replay to the state at its 4th packet
    rep = R.apply(R.Tables("ids"), recs[("a", 1)] + recs[("a", 4)])
    assert ops.diff(rep["tables"].chunks(), [c for c in live if c.table in S.BY_NAME])["same"]
    # b's creation record: its flow, a new port in the host's seen-set, and the host (whose
    # counters moved on: a's 5th packet too)
    ub = S.parse_record(recs[("b", 3)][0])
    assert S.stamp_of(ub) == (bytes(b), 3)
    names = {S.SCHEMAS[u.table].name for u in ub if u.table in S.SCHEMAS}
    assert {"ids_flows", "ids_hosts", "ids_hostports"} <= names
    [hb] = [u for u in ub if u.table == L.StTable.IDS_HOSTS]
    assert S.fields_of(hb)["pkts"] == 6 and S.fields_of(hb)["flows"] == 2 and S.fields_of(hb)["dports"] == 2
    Gate(ids).set_share(False)


def test_a_sweep_shares_an_idle_flows_packets_after_its_last_boundary(nat):
    """The records stop at the last boundary (stamp 4); the sweep (nfx/state/sweep.py) reads
    the rest from the maps once the flow idles, whole; the records plus the sweep's statelets
    replay to the live state; a second sweep has nothing left to share."""
    fresh(nat)
    Gate(nat).set_share(True, BATCH)
    log = SharedLog("nat")
    key = make_key(H1, H2, 6200, 53, "udp")
    recs = []
    for n in range(1, 7):
        run(nat, stamp(_udp(6200), n))
        recs += nat.reader.poll_raw()
    assert [S.stamp_of(r)[1] for r in recs] == [1, 4]
    for r in recs:                                  # what the sharer sent
        log.note(S.parse_record(r))
    assert log.changed_idle(nat, idle_ns=10**9) == {}  # not idle yet: nothing
    time.sleep(0.06)
    got = log.changed_idle(nat, idle_ns=50_000_000)
    [(flow, ups)] = got.items()
    assert flow == bytes(key)
    [u] = ups
    assert u.table == L.StTable.NAT_FWD and u.mask == S.SCHEMAS[u.table].full_mask
    assert S.fields_of(u)["pkts"] == 6                 # the two packets past the boundary
    log.note(ups)
    rep = R.apply(R.Tables("nat"), recs + ups)
    live = [c for c in ops.export(nat, STATE) if c.table in S.BY_NAME]
    assert ops.diff(rep["tables"].chunks(), live)["same"]
    assert log.changed_idle(nat, idle_ns=50_000_000) == {}
    # a move's flush reads the moved flows whatever their idle time: one more packet, then
    run(nat, stamp(_udp(6200), 7))
    assert nat.reader.poll_raw() == []
    moved = log.changed_flows(nat, {bytes(key)})
    assert [S.fields_of(u)["pkts"] for u in moved[bytes(key)]] == [7]
    assert log.changed_flows(nat, {bytes(make_key(H1, H2, 1, 2, "udp"))}) == {}
    Gate(nat).set_share(False)


def test_a_sweep_shares_idle_ids_flows_and_hosts_whose_counters_settled(ids):
    """IDS hosts have no time of their own: the sweep shares a host once its pkts stood still
    between two sweeps; flows once idle. Their whole values replay to the live state."""
    fresh(ids)
    Gate(ids).set_share(True, BATCH)
    log = SharedLog("ids")
    recs = []
    for n in range(1, 7):
        run(ids, stamp(_udp(6300), n))
        recs += ids.reader.poll_raw()
    assert [S.stamp_of(r)[1] for r in recs] == [1, 4]
    for r in recs:
        log.note(S.parse_record(r))
    time.sleep(0.06)
    first = log.changed_idle(ids, idle_ns=50_000_000)
    host = bytes(L.u32(make_key(H1, H2, 6300, 53, "udp").saddr))
    [(flow, ups)] = first.items()                   # the flow; the host's pkts were seen once only
    assert flow == bytes(make_key(H1, H2, 6300, 53, "udp"))
    assert [(u.table, S.fields_of(u)["pkts"]) for u in ups] == [(L.StTable.IDS_FLOWS, 6)]
    log.note(ups)
    second = log.changed_idle(ids, idle_ns=50_000_000)
    [(zero, hups)] = second.items()
    assert zero == SharedLog.ZERO_FLOW and [u.key for u in hups] == [host]
    assert S.fields_of(hups[0])["pkts"] == 6 and hups[0].mask == S.SCHEMAS[hups[0].table].full_mask
    log.note(hups)
    rep = R.apply(R.Tables("ids"), recs + ups + hups)
    live = [c for c in ops.export(ids, STATE) if c.table in S.BY_NAME]
    assert ops.diff(rep["tables"].chunks(), live)["same"]
    assert log.changed_idle(ids, idle_ns=50_000_000) == {}
    Gate(ids).set_share(False)
