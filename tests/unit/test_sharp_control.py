"""SHarP's controller-side logic that needs no kernel: which wildcards overlap or cover a filter
(the sources of a handover), the handover band's prios, a request's checks, and the manager's
order: who may start, and when a finished handover's forward entry becomes a move rule."""
import pytest

from nfx.control import handover as H
from nfx.control.sharp_plane import (BAND_TOP, MAX_PRIORITY, _covers, _key_matches, _overlaps, filter_overlap,
                                     prio)
from nfx.control.steer import PRIO_MIN
from nfx.control.switch import Match
from nfx.errors import BadInput
from nfx.filter import parse
from nfx.flows import make_key
from nfx.migrate.sharp import HandoverRequest


def test_overlap_and_cover():
    everything = Match(in_port="h1")
    udp = Match(in_port="h1", proto=17)
    one = Match(in_port="h1", src="10.0.1.2/32", sport=1024, proto=17)
    net = Match(in_port="h1", src="10.0.1.0/24")
    other = Match(in_port="h1", src="10.0.9.0/24")
    assert _overlaps(everything, one) and _covers(everything, one) and not _covers(one, everything)
    assert _overlaps(udp, one) and _covers(udp, one)
    assert _overlaps(net, one) and _covers(net, one) and not _covers(one, net)
    assert not _overlaps(other, one) and not _overlaps(Match(in_port="h1", proto=6), one)
    assert not _overlaps(Match(in_port="h2"), one)
    assert filter_overlap(parse("all"), parse("proto=udp sport=1024"))
    assert not filter_overlap(parse("proto=tcp"), parse("proto=udp sport=1024"))


def test_a_key_against_a_wildcard():
    k = make_key("10.0.1.2", "10.0.2.2", 1024, 9000, "udp")
    assert _key_matches(Match(src="10.0.1.0/24", sport=1024, proto=17), k, "h1")
    assert not _key_matches(Match(src="10.0.1.0/24", sport=1025), k, "h1")
    assert not _key_matches(Match(in_port="h2"), k, "h1")
    assert not _key_matches(Match(dst="10.0.3.0/24"), k, "h1")


def test_the_band_lies_above_every_move_and_a_higher_r_first():
    assert BAND_TOP < PRIO_MIN
    assert prio(0, True) < prio(0, False) <= BAND_TOP        # detection above forward
    assert prio(5, False) < prio(1, True)                     # a higher r is matched first
    assert prio(MAX_PRIORITY, True) >= 0
    with pytest.raises(BadInput):
        prio(MAX_PRIORITY + 1, False)


def test_request_checks():
    ok = HandoverRequest(parse("all"), 1, "nf1")
    ok.check(["nf0", "nf1"])
    for bad in (HandoverRequest(parse("all"), 1, "nf9"), HandoverRequest(parse("all"), 1, "nf1", max_silence_s=0),
                HandoverRequest(parse("all"), 1, "nf1", state_delay_s=-1), HandoverRequest(parse("all"), 1, "nf1", timeout=0)):
        with pytest.raises(BadInput):
            bad.check(["nf0", "nf1"])


class _Plane:
    def __init__(self):
        self.points, self.removed = [], []

    def point(self, flt, nfs, outside=None):
        self.points.append((flt.text, nfs[0]))

    def remove(self, sw, rid):
        self.removed.append((sw, rid))


class _Done:
    def __init__(self, text, r, dst):
        self.req = HandoverRequest(parse(text), r, dst)
        self.outside = None

    def forward_entries(self):
        return [("si", self.req.priority)]


def _manager():
    m = H.Handovers.__new__(H.Handovers)
    m.plane, m.waiting, m.running, m.finished, m.seq = _Plane(), [], {}, [], 0
    return m


def test_who_may_start():
    m = _manager()
    a = {"req": HandoverRequest(parse("all"), 1, "nf1"), "instances": {"nf0", "nf1"}, "seq": 0}
    b = {"req": HandoverRequest(parse("proto=udp"), 5, "nf2"), "instances": {"nf0", "nf2"}, "seq": 1}
    c = {"req": HandoverRequest(parse("proto=tcp"), 0, "nf3"), "instances": {"nf3", "nf4"}, "seq": 2}
    m.waiting = [a, b, c]
    assert not m._may_start(a) and m._may_start(b) and m._may_start(c)     # b outranks a on nf0
    m.waiting.remove(b)
    m.running[7] = b
    assert not m._may_start(a) and m._may_start(c)                          # nf0 is busy
    del m.running[7]
    assert m._may_start(a)


def test_a_higher_handover_keeps_its_entry_until_the_lower_overlapping_one_is_done():
    m = _manager()
    high = _Done("proto=udp sport=1024", 5, "nf2")
    low = _Done("all", 1, "nf1")
    m.running[1] = {"req": low.req, "instances": {"nf0", "nf1"}}
    m.finished = [high]
    m._settle_forwarding()
    assert m.plane.points == [] and m.finished == [high]                    # it still overrides low
    del m.running[1]
    m.finished.append(low)
    m._settle_forwarding()
    # low's rule first, then high's: the newest move rule wins, so the higher r keeps the overlap
    assert m.plane.points == [("all", "nf1"), ("proto=udp sport=1024", "nf2")]
    assert m.finished == [] and m.plane.removed == [("si", 1), ("si", 5)]


# ---- sources() against a handover installing its entries ------------------------------------
class _Switch:
    """The inside switch's wildcards; add_wild leaves a moment between the rule being in the
    switch and add_wild returning (where a request on another thread once looked)."""

    def __init__(self):
        import threading
        self.rules_in, self.next_id, self.installed = [], 1, threading.Event()

    def add_wild(self, m, rule, prio):
        import time
        from nfx.control.switch_rules import RuleInfo
        rid, self.next_id = self.next_id, self.next_id + 1
        self.rules_in.append(RuleInfo(rid, "wild", rule, m, prio))
        self.installed.set()
        time.sleep(0.2)
        return rid

    def rules(self):
        return list(self.rules_in)

    def ctrl_reader(self):
        class _R:
            def poll(self, timeout):
                return []
        return _R()


class _Steer:
    def __init__(self):
        from nfx import layout as L
        self.sw = {"si": _Switch()}
        self.host_port = {"si": "si-h1"}
        self.rec = {"nodes": {"si": {"ifaces": {"nf0": "si-nf0", "nf1": "si-nf1", "h1": "si-h1"}},
                              "nf0": {"role": "nf"}, "nf1": {"role": "nf"}, "h1": {"role": "host"}}}
        self._in = L.SIDE_IN

    def side_of(self, sw):
        return self._in

    def port_of(self, sw, nf):
        return self.rec["nodes"][sw]["ifaces"][nf]


def test_a_detection_entry_being_installed_is_never_taken_for_where_flows_go():
    """Handover A (r=1) installs its detection entry (to the controller, no output) over every
    flow while request B (r=5) asks where its flows go: B waits for the entry to be owned and
    looks past it, to the move rule that sends them to nf0 (it once saw the entry unowned and
    found the flows nowhere: "they go to the destination already")."""
    import threading
    from nfx.control.sharp_plane import Plane
    from nfx.control.steer import filter_match
    from nfx.control.switch import Rule
    from nfx.control.switch_rules import RuleInfo
    steer = _Steer()
    sw = steer.sw["si"]
    # the move rule in force: every flow to nf0
    sw.rules_in.append(RuleInfo(99, "wild", Rule(output=["si-nf0"]), filter_match(parse("all"), "si-h1", reverse=False),
                                PRIO_MIN))
    plane = Plane(steer)
    try:
        a = threading.Thread(target=lambda: plane.add_detection("si", parse("all"), 1, object()))
        a.start()
        assert sw.installed.wait(2)
        assert plane.sources(parse("proto=udp sport=1024"), prio(5, False)) == {"nf0"}
        a.join()
    finally:
        plane._stop.set()
