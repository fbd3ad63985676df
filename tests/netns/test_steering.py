"""Steering on a real testbed: thousands of point() calls keep working and the latest one still
decides where packets go; a second Steering (a controller restart) takes over the rules in
force; IBCs leave through one kept socket per host, whichever thread sends them."""
import os
import socket
import struct
import threading
import time

import pytest

from nfx import layout as L
from nfx.control.steer import PRIO_MIN, PRIO_TOP, Steering
from nfx.control.switch import flow_key
from nfx.loader import netns
from nfx.filter import parse
from nfx.testbed import builder
from tests.netns.tbutil import py, running_testbed

ETH_P_ALL = 0x0003
ALL, UDP = parse("all"), parse("proto=udp")


@pytest.fixture(scope="module")
def tb():
    with running_testbed("sharp", "nat", instances=2) as rec:
        yield rec


def band(s: Steering) -> dict[str, list[int]]:
    return {n: [r.prio for r in sw.rules() if r.kind == "wild" and r.prio <= PRIO_TOP] for n, sw in s.sw.items()}


def send_udp(rec, sport: int) -> None:
    py(rec["nodes"]["h1"]["ns"], "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
       f"s.bind(('', {sport})); s.sendto(b'x' * 32, ('10.0.2.2', 9000))")


def handled_by(name: str, sport: int, timeout: float = 3.0) -> list[str]:
    """The NAT instances that made a mapping for the flow from h1:sport."""
    deadline = time.monotonic() + timeout
    while True:
        got = [i for i in ("nf0", "nf1") if any(m["sport"] == sport for m in builder.instance(name, i).mappings())]
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_thousands_of_points_then_a_restart(tb):
    name = tb["name"]
    s = Steering(name)
    try:
        # 1200 points, a prio each: past the band's floor (PRIO_TOP - PRIO_MIN) twice, so renumbered twice
        for i in range(1200):
            s.point(ALL if i % 2 else UDP, ["nf1"] if i % 3 else ["nf0"], prune=True)
        s.point(ALL, ["nf1"], prune=True)
        s.point(UDP, ["nf0"], prune=True)                    # newest: UDP goes to nf0
        for prios in band(s).values():
            assert len(prios) == 2 and all(PRIO_MIN <= p <= PRIO_TOP for p in prios)
        send_udp(tb, 4242)
        assert handled_by(name, 4242) == ["nf0"]
        s.point(ALL, ["nf1"], prune=True)                    # now "all" is newer and covers UDP too: UDP's rule goes
        assert [len(p) for p in band(s).values()] == [1, 1]
        send_udp(tb, 4243)
        assert handled_by(name, 4243) == ["nf1"]
    finally:
        s.close()
    # a new controller finds those rules, puts its own above them and replaces same-match ones
    s2 = Steering(name)
    try:
        s2.point(UDP, ["nf0"], prune=True)
        for prios in band(s2).values():
            assert len(prios) == 2
        send_udp(tb, 4244)
        assert handled_by(name, 4244) == ["nf0"]
        # the newest set stays even where it repeats the one under it ("all" to nf1)...
        s2.point(UDP, ["nf1"], prune=True)
        assert [len(p) for p in band(s2).values()] == [2, 2]
        send_udp(tb, 4245)
        assert handled_by(name, 4245) == ["nf1"]
        # ...and goes once a newer point makes it an older repeat: "all" to nf1 stays, UDP's goes
        s2.point(parse("proto=tcp"), ["nf0"], prune=True)
        assert len(band(s2)["si"]) == 2
        send_udp(tb, 4246)
        assert handled_by(name, 4246) == ["nf1"]
        s2.point(ALL, ["nf0"], prune=True)
        s2.forget(ALL)
        s2.point(UDP, ["nf0"], prune=True)
        s2.forget(UDP)
        assert band(s2) == {n: [] for n in s2.sw}
    finally:
        s2.close()


def _capture(ns: str, port: str) -> socket.socket:
    with netns.enter(ns):
        c = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        c.bind((port, 0))
    c.settimeout(0.2)
    return c


def _epochs(c: socket.socket) -> list[int]:
    out = []
    while True:
        try:
            f = c.recv(2048)
        except socket.timeout:
            return out
        if f[12:14] == b"\x08\x00" and f[15] == L.TOS_IBC and f[23] == 17:
            magic, epoch = struct.unpack("!II", f[42:50])
            if magic == L.IBC_MAGIC:
                out.append(epoch)


def test_ibc_keeps_one_socket_per_host_and_works_from_any_thread(tb):
    s = Steering(tb["name"])
    caps = {L.SIDE_IN: _capture(tb["nodes"]["si"]["ns"], "h1"), L.SIDE_OUT: _capture(tb["nodes"]["so"]["ns"], "h2")}
    key = flow_key("10.0.1.2", "10.0.2.2", 1024, 9000, "udp")
    try:
        # the first IBC from a helper thread: that thread's netns switch must not stick to the socket
        t = threading.Thread(target=s.ibc, args=(L.SIDE_IN, key, 1))
        t.start()
        t.join()
        fd = s._ibc_socks["h1"].fileno()
        nfds = len(os.listdir("/proc/self/fd"))
        for e in range(2, 22):
            passed = s.sw["si"].ibcs_passed()
            s.ibc(L.SIDE_IN, key, e)
            # returned once the switch sent it on: a rule changed now decides only behind it
            assert s.sw["si"].ibcs_passed() == passed + 1
        assert s._ibc_socks["h1"].fileno() == fd and len(os.listdir("/proc/self/fd")) == nfds

        def from_elsewhere():
            with netns.enter(tb["nodes"]["so"]["ns"]):      # a thread sitting in another netns
                s.ibc(L.SIDE_IN, key, 22)
                s.ibc(L.SIDE_OUT, key, 23)
        t = threading.Thread(target=from_elsewhere)
        t.start()
        t.join()
        s.ibc(L.SIDE_OUT, key, 24)
        # both sides' IBCs at once (a move's cut): each switch has sent its own on at the return
        passed = {n: s.sw[n].ibcs_passed() for n in ("si", "so")}
        s.ibcs([(L.SIDE_IN, key), (L.SIDE_OUT, key)], 25)
        assert {n: s.sw[n].ibcs_passed() for n in ("si", "so")} == {n: p + 1 for n, p in passed.items()}
        assert sorted(s._ibc_socks) == ["h1", "h2"]
        assert _epochs(caps[L.SIDE_IN]) == list(range(1, 23)) + [25]
        assert _epochs(caps[L.SIDE_OUT]) == [23, 24, 25]
    finally:
        for c in caps.values():
            c.close()
        socks = list(s._ibc_socks.values())
        s.close()
        s.close()
    assert socks and all(x.fileno() == -1 for x in socks) and s._ibc_socks == {}
