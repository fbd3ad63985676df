"""echo_figures: the return path's loss is the round trip's minus the way out's; the rest is
what the sender's sink counted, and the RTT is its latency."""
from nfx.traffic.report import echo_figures


def side(lost, **kw):
    base = dict(received=0, lost=lost, duplicated=0, reordered=0, unexpected=0, out_of_window=0,
                exact=True, clean=not lost, lat_p50_us=1.0, lat_p99_us=2.0, lat_max_us=3.0)
    base.update(kw)
    return base


def test_return_loss_is_round_trip_minus_forward():
    fwd = side(3, received=97)
    back = side(5, received=95, lat_p50_us=10.0, lat_p99_us=20.0, lat_max_us=25.0)
    e = echo_figures(fwd, back, reflected=97, settle_s=0.1)
    assert (e["reflected"], e["received"], e["lost"], e["lost_round_trip"]) == (97, 95, 2, 5)
    assert (e["rtt_p50_us"], e["rtt_p99_us"], e["rtt_max_us"]) == (10.0, 20.0, 25.0)
    assert not e["clean"]


def test_clean_and_exact_need_both_ways():
    ok = side(0, received=10)
    assert echo_figures(ok, ok, 10, 0.0)["clean"]
    assert not echo_figures(side(0, received=10, exact=False, clean=False), ok, 10, 0.0)["exact"]
    assert not echo_figures(ok, side(0, duplicated=1, clean=False), 10, 0.0)["clean"]
