"""A move on a spread testbed marks, steers and cuts its flows by key. Its IBCs must carry tuples
that the source has marked (or it drops them as forged and the controller waits for its cut
forever: `nfx bench cluster --nf ids`), and each side's tuple must be one that side's host sends
(the move's exact rules sit at the switch whose host's network holds a key's source)."""
import ipaddress
import random
import socket

from nfx import layout as L
from nfx.control.steer import Steering
from nfx.filter import parse
from nfx.flows import reverse
from nfx.movespec import ibc_keys, spread_keys


def key(src: str, sport: int, dst: str, dport: int) -> L.FlowKey:
    def ip(a):
        return int.from_bytes(ipaddress.IPv4Address(a).packed, "little")
    return L.FlowKey(saddr=ip(src), daddr=ip(dst), sport=socket.htons(sport), dport=socket.htons(dport), proto=17)


def steering() -> Steering:
    """Just what from_host reads: the hosts in front of each switch and their addresses."""
    st = Steering.__new__(Steering)
    st.rec = {"nodes": {"h1": {"addr": "10.0.1.2/24", "gen_if": "gen0"}, "h2": {"addr": "10.0.2.2/24"}}}
    st.host_of = {"si": "h1", "so": "h2"}
    return st


def test_a_nat_moves_its_keys_as_they_are():
    fwd = [key("10.0.1.2", 1000 + i, "10.0.2.2", 9000) for i in range(3)]
    rev = [key("10.0.2.2", 9000, "10.0.2.100", 20000 + i) for i in range(3)]
    assert [bytes(k) for k in spread_keys(fwd, rev)] == [bytes(k) for k in fwd + rev]


def test_an_ids_moves_both_directions_of_each_flow_once():
    one_way = [key("10.0.1.2", 1000 + i, "10.0.2.2", 9000) for i in range(3)]
    echoed = one_way + [reverse(one_way[0])]                # one flow's return direction exists
    for flows in (one_way, echoed):
        got = [bytes(k) for k in spread_keys(flows, [])]
        assert len(got) == len(set(got)) == 6
        assert set(got) == {bytes(k) for k in one_way} | {bytes(reverse(k)) for k in one_way}


def test_each_sides_ibc_is_a_marked_tuple_its_host_sends():
    """Random IDS flow sets (some flows' return direction seen, some not, listed in any order):
    the IBC tuple each side sends is among the move's keys and comes from that side's host."""
    st = steering()
    rnd = random.Random(13)
    nets = {"si": ipaddress.IPv4Network("10.0.1.0/24"), "so": ipaddress.IPv4Network("10.0.2.0/24")}
    for _ in range(200):
        fwd = [key("10.0.1.2", 1000 + i, "10.0.2.2", 9000) for i in range(rnd.randint(1, 6))]
        flows = fwd + [reverse(k) for k in fwd if rnd.random() < 0.5]
        rnd.shuffle(flows)
        marked = {bytes(k) for k in spread_keys(flows, [])}
        for side, k in ibc_keys(flows, [], parse("all")):
            sw = "si" if side == L.SIDE_IN else "so"
            sent = st.from_host(sw, k)
            assert bytes(sent) in marked
            assert ipaddress.IPv4Address(socket.inet_ntoa(sent.saddr.to_bytes(4, "little"))) in nets[sw]


def test_a_made_up_cut_goes_as_it_is():
    st = steering()
    for side, k in ibc_keys([], [], parse("all")):
        assert bytes(st.from_host("si" if side == L.SIDE_IN else "so", k)) == bytes(k)
