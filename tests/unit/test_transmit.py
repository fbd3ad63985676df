"""The transport choice (nfx/loader/transmit.py) and the release kick's wait for its frames
(nfx/release_kick.py), without the kernel: the probe and the cursor are stand-ins."""
import pytest

from nfx.errors import BadInput, KernelFeature
from nfx.loader import transmit
from nfx import release_kick
from nfx.release_kick import KickPath


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(transmit, "_mode", None)
    monkeypatch.delenv(transmit.ENV, raising=False)
    probes = []

    def probe(allowed):
        monkeypatch.setattr(transmit, "live_frames_allowed", lambda: probes.append(1) or allowed)
    return monkeypatch, probe, probes


@pytest.mark.parametrize("env,allowed,want", [("", True, "live"), ("", False, "tc"), ("auto", False, "tc"),
                                              ("tc", True, "tc"), ("live", True, "live"), (" TC ", False, "tc")])
def test_the_transport_is_what_the_kernel_allows_unless_named(fresh, env, allowed, want):
    mp, probe, probes = fresh
    probe(allowed)
    mp.setenv(transmit.ENV, env)
    assert transmit.mode() == want
    assert transmit.mode() == want and len(probes) <= 1          # asked once a process
    if env.strip().lower() == "tc":
        assert not probes                                        # named: the kernel is not asked


@pytest.mark.parametrize("env,allowed,error,says", [
    ("live", False, KernelFeature, "refuses live-frame"),      # named where the kernel refuses it
    ("xdp", True, BadInput, "live, tc or auto")])              # no such transport
def test_a_transport_that_cannot_be_had_is_refused_clearly(fresh, env, allowed, error, says):
    mp, probe, _ = fresh
    probe(allowed)
    mp.setenv(transmit.ENV, env)
    with pytest.raises(error, match=says):
        transmit.mode()


def cursor_of(values):
    it = iter(values)
    last = [None]

    def read():
        last[0] = next(it, last[0])
        return last[0]
    return read


def test_the_kick_waits_for_its_frames_to_arrive():
    # the frames land a few reads after the run returned
    assert KickPath.settle(cursor_of([10, 10, 12, 13, 14]), 10, 14) == 14


def test_the_kick_stops_waiting_once_the_cursor_stands_still():
    # two frames lost on the way: the cursor stops short, and the wait ends (STILL_S later)
    assert KickPath.settle(cursor_of([10, 11, 12]), 10, 14) == 12


def test_the_kick_counts_across_the_cursors_wrap():
    assert KickPath.settle(cursor_of([0xFFFFFFFE, 0xFFFFFFFF, 0, 1]), 0xFFFFFFFE, 1) == 1


def test_the_release_veth_is_set_up_once_per_netns_veth_and_program(monkeypatch):
    """ready() checks the veth (netlink dumps, ms) once for a program: again for a new program
    (an upgrade) or a netns of the same name made anew, never for the same one."""
    monkeypatch.setattr(release_kick, "_ready", {})
    world = {"ino": 7, "prog": 41}
    set_ups = []
    monkeypatch.setattr(release_kick.netns, "inode", lambda ns: world["ino"])
    monkeypatch.setattr(release_kick.netns, "ifindex", lambda name, ns: 3)
    monkeypatch.setattr(release_kick.bpfsys, "prog_info", lambda fd: (type("I", (), {"id": world["prog"]}), None))
    monkeypatch.setattr(release_kick, "_set_up", lambda ns, rl, fd, pid: set_ups.append(pid) or 99)
    assert release_kick.ready("n", "rl0", 5) == 99 and release_kick.ready("n", "rl0", 5) == 99
    assert set_ups == [41]
    world["prog"] = 42                      # the instance's program was upgraded
    release_kick.ready("n", "rl0", 5)
    world["ino"] = 8                        # the netns was made anew under its name
    release_kick.ready("n", "rl0", 5)
    assert set_ups == [41, 42, 42]
