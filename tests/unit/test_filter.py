"""Vectorised filter matching agrees with a plain per-flow reference, in both directions."""
import ipaddress
import socket
import struct

import numpy as np
from hypothesis import given, settings, strategies as st

from nfx.filter import FLOW_DTYPE, parse

ADDRS = ["10.0.1.2", "10.0.1.77", "10.0.2.2", "10.0.2.100", "192.168.5.5"]


def reference(f, s, d, sp, dp, proto):
    def one(s, d, sp, dp):
        ok = (not f.get("proto") or f["proto"] == proto)
        for side, addr in (("src", s), ("dst", d)):
            if side in f:
                ok &= ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(f[side], strict=False)
        for side, port in (("sport", sp), ("dport", dp)):
            if side in f:
                ok &= f[side][0] <= port <= f[side][1]
        return ok
    return one(s, d, sp, dp) or one(d, s, dp, sp)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "proto": st.sampled_from([6, 17]), "src": st.sampled_from(["10.0.1.0/24", "10.0.2.2", "0.0.0.0/0", "192.168.0.0/16"]),
    "dst": st.sampled_from(["10.0.2.0/24", "10.0.1.2/32"]),
    "sport": st.tuples(st.integers(0, 3000), st.integers(3000, 65535)),
    "dport": st.tuples(st.integers(0, 9000), st.integers(9000, 9100))}),
    st.lists(st.tuples(st.sampled_from(ADDRS), st.sampled_from(ADDRS), st.integers(0, 65535),
                       st.integers(0, 65535), st.sampled_from([6, 17])), min_size=1, max_size=50))
def test_matches_reference(f, flows):
    words = []
    for k, v in f.items():
        words.append(f"{k}={v[0]}-{v[1]}" if isinstance(v, tuple) else f"{k}={'udp' if v == 17 else 'tcp' if v == 6 else v}")
    flt = parse(" ".join(words))
    keys = np.zeros(len(flows), dtype=FLOW_DTYPE)
    for i, (s, d, sp, dp, p) in enumerate(flows):
        keys[i]["saddr"] = struct.unpack("<I", socket.inet_aton(s))[0]
        keys[i]["daddr"] = struct.unpack("<I", socket.inet_aton(d))[0]
        keys[i]["sport"] = socket.htons(sp)
        keys[i]["dport"] = socket.htons(dp)
        keys[i]["proto"] = p
    got = flt.match_flows(keys)
    want = [reference(f, *fl) for fl in flows]
    assert list(got) == want
