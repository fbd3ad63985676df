"""The duplication baseline's datapath (nfx/migrate/dup.py) under BPF_PROG_TEST_RUN: the switch's
tagged duplication (each port's copy gets its tag as source MAC; a frame that arrives tagged is
forged), the source's DUP_HOLD (tagged copies held, the rest processed), the destination's shadow
(state changed, output dropped and counted) and a destination's copy where no dup move shadows
it (dropped untouched, counted as forged). The gate is the same in every NF: an IDS here, whose
per-flow packet counter shows whether the NF processed a packet."""
import socket

import pytest
from scapy.all import IP, UDP, Ether, raw

from nfx import layout as L
from nfx.control.switch import Match, Rule, Switch
from nfx.errors import BadInput
from nfx.filter import parse
from nfx.flows import make_key
from nfx.frames import ibc_frame
from nfx.gate import Gate
from nfx.loader import netns
from nfx.loader.bpfsys import prog_test_run, prog_test_run_skb
from nfx.nfs.ids import IDS, IdsConfig
from tests.scratch import Scratch, scratch_nf

XDP_ABORTED, XDP_DROP, XDP_REDIRECT = 0, 1, 4
TC_ACT_SHOT, TC_ACT_REDIRECT = 2, 7
HOST_MAC = "02:00:00:00:00:0a"
KEY = make_key("10.0.1.2", "10.0.2.2", 5000, 9000, 17)
E = 777
P_SRC, P_HOST = 900011, 900012       # made-up ifindexes: bpf_redirect only sets the verdict here


def udp(src_mac=HOST_MAC, sport=5000, payload=b"p" * 40) -> bytes:
    return raw(Ether(src=src_mac, dst="02:00:00:00:00:01") / IP(src="10.0.1.2", dst="10.0.2.2") /
               UDP(sport=sport, dport=9000) / payload)


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


TAG_SRC, TAG_DST = mac(L.dup_tag(0)), mac(L.dup_tag(1))


# ---- the switch ----
@pytest.fixture(scope="module")
def sw():
    s = Switch.load("tsw-dup")
    s.set_port_role(P_HOST, "host")
    yield s
    s.close()


@pytest.fixture
def clean_sw(sw):
    for r in sw.rules():
        sw.remove(r.id)
    return sw


def test_tagged_rule_tags_each_copy(clean_sw):
    """ports[0] (the source) gets tag 1 on the packet itself; the clone to ports[1] (the
    destination, a real veth here so the copy can be caught) tag 2; the rest is untouched."""
    sw = clean_sw
    sc = Scratch("tdp")
    try:
        ns = sc.ns("n")
        sc.veth("tdpa", ns, "tdpb", ns)
        a = netns.ifindex("tdpa", ns)
        with netns.enter(ns):
            cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            cap.bind(("tdpb", 0))
            cap.settimeout(2)
            rid = sw.add_wild(Match(), Rule(output=[P_SRC, a], tagged=True))
            f = udp()
            before = sw.stats()
            verdict, out, _ = prog_test_run_skb(sw.fn.fd, f, ingress_ifindex=P_HOST)
            while True:                        # the veth's own traffic (none expected) aside
                got = cap.recv(4096)
                if got[12:] == f[12:]:
                    break
        assert verdict == TC_ACT_REDIRECT
        assert out[6:12] == L.dup_tag(0) and out[:6] == f[:6] and out[12:] == f[12:]
        assert got[6:12] == L.dup_tag(1) and got[:6] == f[:6]
        assert sw.stats().get("r_sw_clone_fail", 0) == before.get("r_sw_clone_fail", 0)
        assert [r.rule.tagged for r in sw.rules() if r.id == rid] == [True]
        # the same rule untagged leaves the source MAC alone
        sw.remove(rid)
        sw.add_wild(Match(), Rule(output=[P_SRC, a]))
        with netns.enter(ns):
            verdict, out, _ = prog_test_run_skb(sw.fn.fd, f, ingress_ifindex=P_HOST)
        assert verdict == TC_ACT_REDIRECT and out == f
    finally:
        sc.close()


@pytest.mark.parametrize("tag", [0, 1])
def test_a_frame_that_arrives_tagged_is_forged(clean_sw, tag):
    sw = clean_sw
    rid = sw.add_wild(Match(), Rule(output=[P_SRC]))
    before = sw.stats()
    verdict, _, _ = prog_test_run_skb(sw.fn.fd, udp(src_mac=mac(L.dup_tag(tag))), ingress_ifindex=P_HOST)
    assert verdict == TC_ACT_SHOT
    assert sw.stats().get("r_forged", 0) == before.get("r_forged", 0) + 1
    assert sw.counters()[rid] == (0, 0)
    # one byte off the tag is an ordinary MAC
    assert prog_test_run_skb(sw.fn.fd, udp(src_mac=mac(L.dup_tag(tag)[:5] + b"\x09")),
                             ingress_ifindex=P_HOST)[0] == TC_ACT_REDIRECT


P_TRUNK, P_NF = 900013, 900014


@pytest.mark.parametrize("tag", [0, 1])
def test_a_tagged_frame_from_a_trunk_keeps_its_tag_and_goes_on(clean_sw, tag):
    """A joined site's switch tagged it (nfx testbed join): taken on a trunk port, and only there;
    an NF port's role alone is not enough."""
    sw = clean_sw
    rid = sw.add_wild(Match(), Rule(output=[P_SRC]))
    sw.maps.sw_ports.put(L.u32(P_TRUNK), L.u32(L.SW_PORT_NF | L.SW_PORT_TRUNK))
    sw.maps.sw_ports.put(L.u32(P_NF), L.u32(L.SW_PORT_NF))
    f = udp(src_mac=mac(L.dup_tag(tag)))
    before = sw.stats()
    verdict, out, _ = prog_test_run_skb(sw.fn.fd, f, ingress_ifindex=P_TRUNK)
    assert verdict == TC_ACT_REDIRECT and out == f
    assert sw.stats().get("r_forged", 0) == before.get("r_forged", 0) and sw.counters()[rid][0] == 1
    assert prog_test_run_skb(sw.fn.fd, f, ingress_ifindex=P_NF)[0] == TC_ACT_SHOT
    assert sw.stats().get("r_forged", 0) == before.get("r_forged", 0) + 1


def test_a_tagged_rule_needs_two_ports(clean_sw):
    with pytest.raises(BadInput, match="two output ports"):
        clean_sw.add_wild(Match(), Rule(output=[P_SRC], tagged=True))


# ---- the gate ----
@pytest.fixture(scope="module")
def nf():
    with scratch_nf(IDS, "tdg", IdsConfig(), max_flows=64) as inst:
        inst.ring = Gate(inst).ring()
        try:
            yield inst
        finally:
            inst.ring.close()


@pytest.fixture(autouse=False)
def gate(nf):
    for m in ("nfx_stats", "nfx_marks", "nfx_filters", "ids_flows", "ids_hosts"):
        nf.maps[m].clear()
    g = Gate(nf)
    g.reset_move()
    nf.ring.poll(0)
    return g


def run(nf, frame) -> int:
    with netns.enter(nf.ns):
        v, _, _ = prog_test_run(nf.fn.fd, frame, ingress_ifindex=nf.idx["in"])
    assert v != XDP_ABORTED
    return v


def pkts(nf) -> int:
    """The IDS's packets for KEY's flow: what it processed."""
    return sum(f["pkts"] for f in nf.flows() if f["sport"] == 5000)


def stat(nf, name) -> int:
    return nf.stats().get(name, 0)


def test_dup_hold_processes_untagged_and_holds_the_sources_copies(nf, gate):
    gate.set_move_cfg(epoch=E, dup=L.DUP_SOURCE)
    gate.mark([KEY], L.Action.DUP_HOLD, epoch=E)
    assert run(nf, udp()) == XDP_REDIRECT and pkts(nf) == 1
    f = udp(src_mac=TAG_SRC)
    assert run(nf, f) == XDP_DROP
    assert pkts(nf) == 1                                  # held, not processed
    assert stat(nf, "r_buffered") == 1 and stat(nf, "r_dup_copy_src") == 1
    [m] = gate.marks().values()
    assert (m.action, m.buffered, m.released) == (L.Action.DUP_HOLD, 1, 0)
    [rec] = [p for p in nf.ring.poll(0) if p.kind == L.BufKind.PACKET]
    assert rec.rx & L.RX_DUP_SRC and rec.data == f and rec.epoch == E
    # a destination's copy is no business of a source's: dropped untouched
    assert run(nf, udp(src_mac=TAG_DST)) == XDP_DROP
    assert pkts(nf) == 1 and stat(nf, "r_forged") == 1


def test_dup_hold_filter_marks_a_new_flow(nf, gate):
    gate.set_move_cfg(epoch=E, dup=L.DUP_SOURCE)
    gate.set_filter(0, parse("proto=udp"), L.Action.DUP_HOLD, tag=E)
    assert run(nf, udp(src_mac=TAG_SRC, sport=5000)) == XDP_DROP
    [m] = gate.marks().values()
    assert (m.action, m.buffered, m.epoch) == (L.Action.DUP_HOLD, 1, E)
    # an untagged packet of another new flow: marked too, and processed
    assert run(nf, udp(sport=5001)) == XDP_REDIRECT
    assert len(gate.marks()) == 2 and stat(nf, "r_buffered") == 1


def test_dup_hold_flips_to_process_once_drained(nf, gate):
    gate.set_move_cfg(epoch=E, dup=L.DUP_SOURCE)
    gate.mark([KEY], L.Action.DUP_HOLD, epoch=E)
    assert run(nf, udp(src_mac=TAG_SRC)) == XDP_DROP
    gate.set_move_cfg(drain_epoch=E)
    # one still held (buffered 1, released 0): the next copy waits behind it
    assert run(nf, udp(src_mac=TAG_SRC)) == XDP_DROP and pkts(nf) == 0
    gate.reset_move()
    gate.unmark()
    gate.mark([KEY], L.Action.DUP_HOLD, epoch=E)
    gate.set_move_cfg(epoch=E, dup=L.DUP_SOURCE, drain_epoch=E)
    assert run(nf, udp(src_mac=TAG_SRC)) == XDP_REDIRECT and pkts(nf) == 1
    [m] = gate.marks().values()
    assert m.action == L.Action.PROCESS


def test_the_sources_ibc_counts_in_its_dup_move(nf, gate):
    gate.mark([KEY], L.Action.DUP_HOLD, epoch=E)
    ibc = ibc_frame(KEY, L.dup_tag(0), E)
    assert run(nf, ibc) == XDP_DROP
    assert stat(nf, "r_forged") == 1 and list(gate.move_state().ibc_switch) == [0, 0]   # no dup move here
    gate.set_move_cfg(epoch=E, dup=L.DUP_SOURCE)
    assert run(nf, ibc) == XDP_DROP
    assert list(gate.move_state().ibc_switch) == [1, 0]
    [rec] = [p for p in nf.ring.poll(0) if p.kind == L.BufKind.IBC]
    assert rec.epoch == E and rec.rx & L.RX_DUP_SRC
    assert stat(nf, "r_shadow") == 0


def test_shadow_changes_state_and_drops_the_output(nf, gate):
    gate.set_move_cfg(epoch=E, dup=L.DUP_SHADOW)
    f = udp(src_mac=TAG_DST)
    for i in range(3):
        assert run(nf, f) == XDP_DROP
    assert pkts(nf) == 3                                  # the state moved on
    assert stat(nf, "r_shadow") == 3 and stat(nf, "r_shadow_bytes") == 3 * len(f)
    assert stat(nf, "r_dup_copy_dst") == 3 and stat(nf, "v_drop") == 3 and stat(nf, "v_redirect") == 0
    # held while dst waits for the snapshot: not yet shadow traffic; its release is
    gate.mark([KEY], L.Action.BUFFER, epoch=E)
    assert run(nf, f) == XDP_DROP and pkts(nf) == 3 and stat(nf, "r_shadow") == 3
    assert stat(nf, "r_buffered") == 1 and stat(nf, "r_dup_copy_dst") == 4
    gate.unmark()
    # untagged (after the repoint): processed and output for real
    assert run(nf, udp()) == XDP_REDIRECT and pkts(nf) == 4 and stat(nf, "r_shadow") == 3


def test_op_destination_holds_its_own_packets_not_its_copies(nf, gate):
    """dup op after the repoint: a flow's own (untagged) packet is held, and the flow with it;
    a copy of a flow still processing goes on in shadow; with the hold off the flow flips back
    once its backlog is out."""
    other = make_key("10.0.1.2", "10.0.2.2", 5001, 9000, 17)
    gate.set_move_cfg(epoch=E, dup=L.DUP_SHADOW | L.DUP_HOLD_OWN, drain_epoch=E)
    gate.mark([KEY, other], L.Action.PROCESS, epoch=E)
    assert run(nf, udp()) == XDP_DROP and pkts(nf) == 0
    assert stat(nf, "r_buffered") == 1 and stat(nf, "r_shadow") == 0
    assert gate.marks()[bytes(KEY)].action == L.Action.BUFFER
    assert run(nf, udp(src_mac=TAG_DST, sport=5001)) == XDP_DROP
    assert stat(nf, "r_shadow") == 1 and pkts(nf) == 0 and gate.marks()[bytes(other)].action == L.Action.PROCESS
    [rec] = [p for p in nf.ring.poll(0) if p.kind == L.BufKind.PACKET]
    assert not rec.rx & (L.RX_DUP_DST | L.RX_DUP_SRC)
    # a mark of another move is none of this hold's business
    gate.mark([other], L.Action.PROCESS, epoch=E + 1)
    assert run(nf, udp(sport=5001)) == XDP_REDIRECT
    # the hold off, nothing held any more (buffered == released): the flow processes again
    gate.set_move_cfg(dup=L.DUP_SHADOW)
    gate.mark([KEY], L.Action.BUFFER, epoch=E)
    assert run(nf, udp()) == XDP_REDIRECT and gate.marks()[bytes(KEY)].action == L.Action.PROCESS


def test_a_destinations_copy_with_no_dup_move_is_dropped_untouched(nf, gate):
    """Forged, or late: its original is another instance's to output."""
    for cfg in ({}, {"epoch": E, "dup": L.DUP_SOURCE}, {"epoch": E, "op": 1}):
        gate.reset_move()
        if cfg:
            gate.set_move_cfg(**cfg)
        before = stat(nf, "r_forged")
        assert run(nf, udp(src_mac=TAG_DST)) == XDP_DROP
        assert stat(nf, "r_forged") == before + 1
    assert pkts(nf) == 0 and stat(nf, "r_shadow") == 0
