"""Agent protocol helpers (no root): errors survive the trip through an ERROR frame, actions and
events are checked and made JSON, and the bench's synthetic NAT state is consistent."""
import io

import numpy as np
import pytest

from nfx import errors as E
from nfx import layout as L
from nfx.agent import protocol as P
from nfx.bench.state import synth_nat
from nfx.nfs.nat import pool_hash
from nfx.state import wire


@pytest.mark.parametrize("cls", [E.BadInput, E.NotFound, E.BpfError, E.Timeout, E.Refused, E.AgentDown, E.NfxError])
def test_errors_round_trip_through_an_error_frame(cls):
    buf = io.BytesIO()
    wire.write(buf, P.error_frame(cls("it broke", hint="do this"), op="get"))
    buf.seek(0)
    kind, obj = wire.Reader(buf).frame()
    assert kind == wire.ERROR and obj["op"] == "get" and obj["code"] == cls.exit_code
    with pytest.raises(cls, match="nf0: it broke") as e:
        E.from_wire(obj, "nf0: ")
    assert e.value.hint == "do this" and e.value.exit_code == cls.exit_code


def test_unexpected_exceptions_become_internal_errors():
    obj = E.to_wire(KeyError("x"))
    assert obj["type"] == "NfxError" and obj["code"] == 1 and "internal error: KeyError" in obj["error"]
    with pytest.raises(E.NfxError):
        E.from_wire({"error": "?", "type": "SomethingElse"})


def test_actions():
    assert P.action_num("drop") == L.Action.DROP and P.action_num("TO-CTRL") == L.Action.TO_CTRL
    assert P.action_num(2) == L.Action.BUFFER
    for bad in ("teleport", 9, True, None):
        with pytest.raises(E.BadInput):
            P.action_num(bad)


def test_events_become_json():
    class Ev:
        def __init__(self):
            self.kind, self.n = "sig", 3
    assert P.jsonable({"b": b"\x01\xff", "t": (1, 2), "o": Ev(), "x": {1, 2} and frozenset()}) == \
        {"b": "01ff", "t": [1, 2], "o": {"kind": "sig", "n": 3}, "x": "frozenset()"}


def test_synthetic_nat_state_is_consistent():
    n = 50_000
    t = synth_nat(n, "10.0.2.100-10.0.2.107", 20000, 59999)
    fk, fv = t["nat_fwd"]
    rk, rv = t["nat_rev"]
    pk, pv = t["nat_ports"]
    for k in (fk, rk, pk):
        assert len(np.unique(k.view(f"V{k.dtype.itemsize}"))) == n
    # each connection's two entries point at each other; its port entry names its inside flow
    assert (fv["peer"].view("V16") == rk.view("V16")).all() and (rv["peer"].view("V16") == fk.view("V16")).all()
    assert (pv.view("V16") == fk.view("V16")).all()
    assert (pk["addr"] == rk["daddr"]).all() and (pk["port"] == rk["dport"]).all() and (pk["proto"] == fk["proto"]).all()
    # paired pooling as the datapath does it: the inside host picks the public address
    inside = fk["saddr"].byteswap()
    pub = rk["daddr"].byteswap()
    base = int.from_bytes(bytes([10, 0, 2, 100]), "big")
    assert (pub == base + pool_hash(inside) % 8).all()
    port = pk["port"].byteswap()
    assert port.min() >= 20000 and port.max() <= 59999
    icmp = fk["proto"] == 1
    assert icmp.any() and (fk["dport"][icmp] == 0).all() and (rk["sport"][icmp] == 0).all()
    assert set(np.unique(fk["proto"])) == {1, 6, 17}
    assert (fv["last_seen_ns"] >= fv["created_ns"]).all()
