"""The failover bench's pure parts: the sink's gap after a kill (Timeline.gap_after, rate) on
synthetic samples, and what the new primary kept of the old one's mappings (compare_mappings)."""
from nfx.bench.failover import Timeline, compare_mappings, summary


def _timeline(samples):
    tl = Timeline(sink=None)
    tl.samples = list(samples)
    return tl


def test_gap_after_kill():
    # 1 ms samples, 100 packets each; killed at t=10.0105; 2 more samples still grow (in flight),
    # then the count stands still until t=10.045, when it grows again
    s, n = [], 0
    for i in range(60):
        t = 10.0 + i / 1000
        if not 10.013 <= t < 10.045:
            n += 100
        s.append((t, n))
    g = _timeline(s).gap_after(10.0105)
    assert g["recovery_ms"] == 34.5                 # 10.045 - 10.0105
    assert g["stalled_ms"] == 1.5                   # the last sample with the count still growing: 10.012
    assert g["in_flight"] == 200


def test_sent_in_gap_counts_what_the_generator_sent_from_the_loss_to_past_the_recovery():
    # as above, and the generator, behind its schedule, sends 300 a ms from t=10.005 to 10.030
    s, sent, n, m = [], [], 0, 0
    for i in range(60):
        t = 10.0 + i / 1000
        if not 10.013 <= t < 10.045:
            n += 100
        m += 300 if 10.005 <= t < 10.030 else 100
        s.append((t, n))
        sent.append((t, m))
    tl = _timeline(s)
    tl.sent = sent
    g = tl.gap_after(10.0105, t_loss=10.0095)
    # from the sample at or before 10.0095 (10.009) to the one at or before 10.045 + 0.010
    # (10.055): 10.010-10.029 at 300, 10.030-10.055 at 100
    assert g["sent_in_gap"] == 20 * 300 + 26 * 100
    assert _timeline(s).gap_after(10.0105)["recovery_ms"] == 34.5
    assert "sent_in_gap" not in _timeline(s).gap_after(10.0105)     # no generator sampled


def test_gap_after_never_recovers():
    s = [(i / 1000, min(i, 5) * 10) for i in range(20)]
    g = _timeline(s).gap_after(0.0045)
    assert g["recovery_ms"] is None and g["stalled_ms"] is not None


def test_rate_bins():
    s = [(i / 1000, i * 100) for i in range(-300, 500)]          # 100,000 packets/s throughout
    bins = _timeline(s).rate(0.0, bin_s=0.01)
    assert bins and all(abs(pps - 100_000) < 1 for _, pps in bins)
    assert bins[0][0] < -190 and bins[-1][0] > 380


def _m(public, pkts):
    return {"public": public, "pkts_out": pkts}


def test_compare_mappings_lost_and_drift():
    before = {("a", 1): _m("p:1", 100), ("a", 2): _m("p:2", 100), ("a", 3): _m("p:3", 100)}
    after = {("a", 1): _m("p:1", 95), ("a", 2): _m("p:9", 100)}       # 2 changed public tuple, 3 missing
    c = compare_mappings(before, after, batch=30)
    assert c == {"nat_mappings": 3, "nat_mappings_lost": 2, "drift_max": 5, "drift_over_batch": 0}


def test_compare_mappings_expected_counts():
    before = {("a", 1): _m("p:1", 10), ("a", 2): _m("p:2", 10)}
    after = {("a", 1): _m("p:1", 170), ("a", 2): _m("p:2", 200)}
    # what each should hold: its count before the traffic plus what the sink got of it
    c = compare_mappings(before, after, batch=30, expected={("a", 1): 200, ("a", 2): 200})
    assert c["nat_mappings_lost"] == 0 and c["drift_max"] == 30 and c["drift_over_batch"] == 1
    assert compare_mappings(before, after, 31, {("a", 1): 200, ("a", 2): 200})["drift_over_batch"] == 0


def test_summary_flags_a_miss():
    row = {"recovery_ms": 40.0, "detection_ms": 30.0, "lost": 4000, "nat_mappings_lost": 0, "tcp_mappings_lost": 0,
           "drift_max": 10, "drift_over_batch": 0, "tcp_survived": True}
    ok = summary([row, dict(row, recovery_ms=60.0)], 30)
    assert ok["recovery_under_100ms"] and ok["all_mappings_kept"] and ok["all_tcp_survived"]
    assert ok["recovery_ms_median"] == 50.0
    bad = summary([row, dict(row, recovery_ms=120.0, tcp_survived=False, nat_mappings_lost=1)], 30)
    assert not bad["recovery_under_100ms"] and not bad["all_mappings_kept"] and not bad["all_tcp_survived"]
    assert not summary([row, dict(row, recovery_ms=None)], 30)["recovery_under_100ms"]
