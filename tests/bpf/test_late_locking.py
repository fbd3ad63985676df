"""Late locking's groups and reads on a loaded NAT (nfx/agent/late_locking.py, ops.read_keys):
every per-flow entry is in exactly one group, a flow's outside tuple in its own flow's group, and
a group's state read by its keys (a syscall a key, and through the keyed readers) is what a
batch export of the whole table gives for those keys."""
import ctypes as ct

import pytest
from scapy.all import IP, Raw, UDP, raw

from nfx.agent import late_locking as LL
from nfx.state import ops
from tests.bpf.test_stamp_nf import H1, H2, NAT, NAT_CFG, XDP_REDIRECT, _instance, eth, fresh, run

FLOWS = 400


@pytest.fixture(scope="module")
def nat():
    yield from _instance(NAT, "tll", NAT_CFG)


def _entries(chunks) -> dict:
    """{(table, key bytes): value bytes} of chunks."""
    out = {}
    for c in chunks:
        slot = c.value_size * c.ncpu
        kb, vb = bytes(c.keys), bytes(c.values)
        for i in range(c.count):
            out[c.table, kb[i * c.key_size:(i + 1) * c.key_size]] = vb[i * slot:(i + 1) * slot]
    return out


def test_groups_cover_every_entry_once_and_reads_match_the_export(nat, monkeypatch):
    fresh(nat)
    for sport in range(3000, 3000 + FLOWS):
        frame = raw(eth() / IP(src=H1, dst=H2) / UDP(sport=sport, dport=53) / Raw(b"x" * 8))
        assert run(nat, frame)[0] == XDP_REDIRECT
    per_flow = list(ops.export(nat, ("per-flow",)))
    whole = _entries(per_flow)
    assert sum(1 for t, _ in whole if t == "nat_fwd") == FLOWS
    monkeypatch.setattr(LL, "GROUP_FLOWS", 64)
    plan, every = LL.groups(nat.kind, per_flow)
    assert len(every) == FLOWS
    assert len(plan) == -(-FLOWS // 64)

    group_of = {}
    for g, (marks, reads, owners) in enumerate(plan):
        mb = bytes(marks)
        for i in range(0, len(mb), 16):
            assert mb[i:i + 16] not in group_of, "a key marked in two groups"
            group_of[mb[i:i + 16]] = g
        got = _entries(c for c in (ops.read_keys(nat, t, raw_) for t, raw_ in reads.items()) if c is not None)
        assert got and all(whole[k] == v for k, v in got.items())
        # the same through the tables' keyed readers (many keys a syscall)
        assert all(nat.maps[t].prepare_keyed_reads() for t in reads)
        assert _entries(c for c in (ops.read_keys(nat, t, raw_) for t, raw_ in reads.items()) if c is not None) == got
        for t in reads:
            nat.maps[t].close_keyed_reads()
        assert {k[1][:16] for k in got} == {mb[i:i + 16] for i in range(0, len(mb), 16)}
        # the owners pick the same entries out of a whole-table export
        assert _entries(ops.export(nat, ("per-flow",), keyset=owners)) == got
    assert set(group_of) == {k[:16] for _, k in whole}
    for (table, key), value in whole.items():
        if table == "nat_rev":      # its value begins with the inside flow's key: the same group
            assert group_of[key[:16]] == group_of[value[:16]]


def test_read_keys_skips_keys_that_are_gone(nat):
    fresh(nat)
    for sport in (4000, 4001):
        assert run(nat, raw(eth() / IP(src=H1, dst=H2) / UDP(sport=sport, dport=53)))[0] == XDP_REDIRECT
    [fwd] = [c for c in ops.export(nat, ("per-flow",)) if c.table == "nat_fwd"]
    ksz = fwd.key_size
    keys = bytes(fwd.keys)
    gone = bytes(ksz)                      # the all-zero key: no flow
    c = ops.read_keys(nat, "nat_fwd", keys[:ksz] + gone + keys[ksz:2 * ksz])
    assert c.count == 2 and bytes(c.keys) == keys[:2 * ksz]
    assert bytes(c.values)[:c.value_size] == bytes(fwd.values)[:fwd.value_size]
    assert ops.read_keys(nat, "nat_fwd", gone) is None
    assert ct.sizeof(nat.maps["nat_fwd"].Key) == ksz


def test_runs_count_every_run_begun_and_ended_on_its_cpu(nat):
    # a passed packet, a dropped one (no mapping for a packet from outside) and one the NAT maps:
    # every run is begun and ended once, whatever its verdict
    before = nat.runs()
    assert all(b == e for b, e in before)
    frames = [(raw(eth() / IP(src=H1, dst=H2) / UDP(sport=9000 + i, dport=53) / Raw(b"x" * 8)), "in")
              for i in range(5)]
    frames.append((raw(eth() / IP(src=H2, dst=H1) / UDP(sport=53, dport=1) / Raw(b"x" * 8)), "out"))
    verdicts = {run(nat, f, side)[0] for f, side in frames}
    assert len(verdicts) == 2            # redirected and dropped
    after = nat.runs()
    assert all(b == e for b, e in after)
    assert sum(b for b, _ in after) - sum(b for b, _ in before) == len(frames)


def test_paced_groups_and_the_new_flows_each_wait_for_the_last_release(nat, monkeypatch):
    """pc: a group is marked only once every chunk before it is acknowledged, and so is the hold
    of new flows after the last group (the walk that follows keeps the CPU the last group's puts
    go out on: they left only after it, 13-18 ms later)."""
    from nfx.filter import parse
    fresh(nat)
    for sport in range(5000, 5000 + FLOWS):
        frame = raw(eth() / IP(src=H1, dst=H2) / UDP(sport=sport, dport=53) / Raw(b"x" * 8))
        assert run(nat, frame)[0] == XDP_REDIRECT
    per_flow = list(ops.export(nat, ("per-flow",)))
    monkeypatch.setattr(LL, "PACED_GROUP_FLOWS", 64)
    log = []

    class Session:
        nf = nat

        def mark(self, keys, slot):
            log.append("mark")

        def hold_new(self, flt, slot):
            log.append("hold_new")

    class Recorded(LL.Pace):
        def wait(self):
            log.append(("wait", self.sent - self.acked))
            super().wait()

    pace = Recorded(1.0)
    for c in pace.count(LL.export_locked(Session(), per_flow, parse("all"), ("per-flow",), 0, None, pace)):
        pace.done(None, [c])               # each chunk acknowledged as it goes
    steps = [i for i, e in enumerate(log) if e in ("mark", "hold_new")]
    assert log.count("mark") == -(-FLOWS // 64) and log[steps[-1]] == "hold_new"
    assert all(log[i - 1] == ("wait", 0) for i in steps), log
