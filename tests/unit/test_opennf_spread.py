"""OpenNF on a spread testbed (nfx.migrate.opennf.OpenNF.run, against endpoints and switches that
log what they are asked): the move holds its flows by key when it begins, and steers and cuts
exactly those. A flow born at the source after that (the state it reads may carry it) was not
held: steered to the destination it would be processed at both in the duplication phase and at
the destination without the source's later updates. It stays where the spread sends it."""
import ipaddress
import socket
from types import SimpleNamespace

import pytest

from nfx import layout as L
from nfx import packets as pk
from nfx.filter import parse
from nfx.flows import reverse
from nfx.migrate.mechanism import Ctx
from nfx.migrate.opennf import OpenNF
from nfx.movespec import MoveRequest


def key(src: str, sport: int, dst: str, dport: int) -> L.FlowKey:
    def ip(a):
        return int.from_bytes(ipaddress.IPv4Address(a).packed, "little")
    return L.FlowKey(saddr=ip(src), daddr=ip(dst), sport=socket.htons(sport), dport=socket.htons(dport), proto=17)


def nat_flow(i: int) -> tuple[L.FlowKey, L.FlowKey]:
    """A NAT connection's inside tuple and the public tuple its return traffic carries."""
    return key("10.0.1.2", 1000 + i, "10.0.2.2", 9000), key("10.0.2.2", 9000, "10.0.2.100", 20000 + i)


HELD = [nat_flow(i) for i in range(3)]
BORN = nat_flow(99)                    # born at the source after the move read its keys


def chunk(table: str, keys: list) -> SimpleNamespace:
    return SimpleNamespace(scope="per-flow", table=table, keys=pk.keys_blob(keys), count=len(keys), nbytes=0)


class Src:
    name, spread, shares, cluster = "nf0", True, False, None

    def __init__(self):
        self.marked = []

    def keys(self, flt):
        fwd, rev = [f for f, _ in HELD], [r for _, r in HELD]
        return fwd + rev, rev

    def begin(self, role, epoch, op, keys, flt, on_ctrl=None, **kw):
        assert flt is None, "a spread move holds by key, never by the filter"
        self.marked = [bytes(k) for k in keys]

    def export(self, scopes, flt, ll=False, peer=None):
        everyone = HELD + [BORN]
        yield chunk("nat_fwd", [f for f, _ in everyone])
        yield chunk("nat_rev", [r for _, r in everyone])


class Dst:
    name, spread, shares, cluster = "nf1", True, False, None

    def begin(self, role, epoch, op, keys, flt, **kw):
        self.marked = [bytes(k) for k in keys]

    def send_state(self, chunks, pipelined, on_done=None):
        n = sum(1 for _ in chunks)
        return {"chunks": n, "bytes": 0, "applied_at": None, "entries": 0}


class Steer:
    applied_at = 0.0

    def __init__(self):
        self.keys, self.cuts = [], []

    def point(self, flt, nfs, outside, keys=None):
        self.keys.append((tuple(nfs), {bytes(k) for k in keys}))

    def ibcs(self, cuts, epoch):
        self.cuts += [bytes(k) for _, k in cuts]


@pytest.mark.parametrize("guarantee", ["lf", "op"])
def test_a_spread_move_steers_and_cuts_the_flows_it_held(guarantee):
    src, dst, steer = Src(), Dst(), Steer()
    req = MoveRequest("nf0", "nf1", parse("all"), ("per-flow",), guarantee=guarantee, mechanism="opennf", timeout=5.0)
    x = Ctx(req, src, dst, steer, 7)
    try:
        OpenNF().run(x)
    finally:
        x.ctrl.stop()
    held = {bytes(k) for pair in HELD for k in pair}
    assert set(src.marked) == held
    assert steer.keys and all(ks == held for _, ks in steer.keys)      # the born flow is not steered
    assert not {bytes(k) for k in BORN} & {bytes(k) for k in x.keys}   # ... nor deleted at the source
    assert all(k in set(src.marked) for k in steer.cuts)                # the cut's tuples are held ones
    assert len(steer.cuts) == (2 if guarantee == "op" else 0)
    assert bytes(reverse(BORN[0])) not in held
