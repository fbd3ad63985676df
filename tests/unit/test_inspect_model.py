"""The inspector's view model without a testbed: one-at-a-time flow matching agrees with the
vectorised filter, statelets are tied to their connection (NAT's reverse entry and port by the
inside flow they were created for), stats events become rates and watched totals, and the screen
renders."""
import numpy as np
from hypothesis import given, settings, strategies as st
from rich.console import Console

from nfx import layout as L
from nfx.flows import make_key
from nfx.inspect import view
from nfx.inspect.flows import FlowMatch
from nfx.inspect.model import Model, changed
from nfx.state import statelets as S
from nfx.filter import FLOW_DTYPE, parse

ADDRS = ["10.0.1.2", "10.0.1.77", "10.0.2.2", "10.0.2.100"]
FILTERS = ["all", "proto=udp", "sport=1024-1030", "dport=9000", "src=10.0.1.0/24 dport=9000-9001",
           "proto=tcp dst=10.0.2.2 sport=1025", "src=10.0.2.100/32"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FILTERS), st.sampled_from(ADDRS), st.sampled_from(ADDRS),
       st.sampled_from([1024, 1025, 1030, 1031, 9000, 9001, 20000]), st.sampled_from([1024, 9000, 9001, 20000]),
       st.sampled_from(["udp", "tcp"]))
def test_flow_match_agrees_with_filter(text, s, d, sp, dp, proto):
    f = parse(text)
    raw = bytes(make_key(s, d, sp, dp, proto))
    want = bool(f.match_flows(np.frombuffer(raw, dtype=FLOW_DTYPE))[0])
    m = FlowMatch(f)
    assert m.key(raw) == want
    assert m.flow({"src": s, "dst": d, "sport": sp, "dport": dp, "proto": proto}) == want


def test_host_match():
    m = FlowMatch(parse("src=10.0.1.0/24 dst=10.0.2.2"))
    assert m.host("10.0.1.9") and m.host("10.0.2.2") and not m.host("10.0.3.1")
    assert FlowMatch(parse("sport=5")).host("1.2.3.4")       # no address in the filter: any host


def _nat_statelets(sport: int, public_port: int) -> list[dict]:
    """What a NAT's new connection writes: reverse entry, port, forward entry (in datapath order)."""
    inside = make_key("10.0.1.2", "10.0.2.2", sport, 9000, "udp")
    outside = make_key("10.0.2.2", "10.0.2.100", 9000, public_port, "udp")
    full = S.BY_NAME["nat_fwd"].full_mask
    vals = (*np.frombuffer(bytes(inside), "<u8"), 1, 66, 1000, 1000, 0)
    ups = [S.Update(int(L.StTable.NAT_REV), int(L.StOp.SET), bytes(outside), full, tuple(map(int, vals)), 0),
           S.Update(int(L.StTable.NAT_PORTS), int(L.StOp.SET),
                    bytes(L.NatPort(addr=outside.daddr, port=outside.dport, proto=17)), 1 << L.STF_VALUE,
                    tuple(map(int, np.frombuffer(bytes(inside), "<u8"))), 0),
           S.Update(int(L.StTable.NAT_FWD), int(L.StOp.SET), bytes(inside), full,
                    (*map(int, np.frombuffer(bytes(outside), "<u8")), 1, 66, 1000, 1000, 0), 0),
           # later: the reverse entry touched, no peer carried
           S.Update(int(L.StTable.NAT_REV), int(L.StOp.SET), bytes(outside), 0b10110, (2, 132, 2000), 0)]
    return [{"instance": "nf0", "stream": "statelets", "ts": 0.0, **S.to_dict(u)} for u in ups]


def test_statelets_follow_their_connection():
    m = Model("t", ["nf0"], FlowMatch(parse("sport=1024-1030")), "sport=1024-1030")
    kept = [m.apply(ev) for ev in _nat_statelets(1025, 20001) + _nat_statelets(2000, 20002)]
    assert kept == [True] * 4 + [False] * 4
    i = m.instances["nf0"]
    assert (i.seen["statelets"], i.hidden["statelets"], len(i.statelets)) == (8, 4, 4)
    texts = [s["flow_text"] for s in i.statelets]
    assert texts[0].startswith("udp 10.0.2.2:9000 > 10.0.2.100:20001") and "(of 10.0.1.2:1025)" in texts[0]
    assert texts[2] == "udp 10.0.1.2:1025 > 10.0.2.2:9000"
    assert changed(i.statelets[2]).startswith("new peer=10.0.2.100:20001 pkts=1 bytes=66")
    assert changed(i.statelets[3]) == "pkts=2 bytes=132 last_seen"
    # a reverse entry whose creation was never seen cannot be tied to a connection
    fresh = Model("t", ["nf0"], FlowMatch(parse("sport=1024-1030")), "x")
    assert fresh.apply(_nat_statelets(1025, 20001)[3]) is False
    assert Model("t", ["nf0"], FlowMatch(), None).apply(_nat_statelets(1025, 20001)[3]) is True


def test_alerts_filtered_and_stats_rates():
    m = Model("t", ["nf0"], FlowMatch(parse("dport=9999")), "dport=9999")
    flow = {"src": "10.0.1.2", "dst": "10.0.2.2", "sport": 5555, "proto": "udp"}
    assert m.apply({"instance": "nf0", "stream": "alerts", "ts": 0, "kind": "sig", "sig_id": 1, "flow": {**flow, "dport": 9999}})
    assert not m.apply({"instance": "nf0", "stream": "alerts", "ts": 0, "kind": "sig", "sig_id": 1, "flow": {**flow, "dport": 1}})
    m.apply({"instance": "nf0", "stream": "subscribed", "kind": "ids", "streams": ["stats", "alerts"], "unavailable": {}})
    m.apply({"instance": "nf0", "stream": "stats", "interval_s": 0.5, "delta": {"v_redirect": 500, "r_buffered": 10},
             "total": {"v_redirect": 10500, "r_buffered": 10, "v_drop": 7}})
    m.apply({"instance": "nf0", "stream": "stats", "interval_s": 0.5, "delta": {"v_redirect": 1000, "v_drop": 5},
             "total": {"v_redirect": 11500, "r_buffered": 10, "v_drop": 12}})
    i = m.instances["nf0"]
    assert i.rate("v_redirect") == 2000 and i.verdict_pps == 2010 and i.drop_pps == 10
    assert (i.since("v_redirect"), i.since("r_buffered"), i.since("v_drop")) == (1500, 10, 5)
    c = Console(width=160, record=True, color_system=None)
    c.print(view.screen(m, ["stats", "alerts"], 40, 5))
    txt = c.export_text()
    assert "nf0 · ids · live" in txt and "2,010 pps" in txt and "1 shown, 1 filtered out" in txt
    assert "buffered" in txt and "watching 0:00:00" in txt
