"""The generator's rate loop (no BPF: its sends are recorded or faked): behind its schedule it
catches up at full speed, or, with max_lag_s, owes at most that much and sends later instead;
a run a signal cut short is not an error."""
import time

import pytest

from nfx.traffic.gen import Generator

RATE, SECS, STALL_S = 10_000, 0.2, 0.1


def _loop(max_lag_s):
    g = object.__new__(Generator)
    g.max_burst = 16
    sends = []

    def call(n, cpu=None):
        if not sends:
            time.sleep(STALL_S)          # the sender's first call stalls (a CPU taken away)
        sends.append((time.perf_counter(), n))
        return n
    g._call = call
    sent, calls, elapsed = g._loop(RATE, SECS, None, 0.001, max_lag_s=max_lag_s)
    return sent, elapsed, sends


def _most_in(sends, window_s):
    return max(sum(n for t, n in sends if t0 <= t < t0 + window_s) for t0, _ in sends)


def test_behind_its_schedule_it_catches_up_in_a_burst():
    sent, elapsed, sends = _loop(None)
    assert sent == RATE * SECS
    assert _most_in(sends[1:], 0.005) >= 0.05 * RATE      # the stall's 100 ms owed, sent at once


def test_with_max_lag_it_sends_as_many_later_instead():
    sent, elapsed, sends = _loop(0.005)
    assert sent == RATE * SECS
    assert elapsed >= SECS + STALL_S * 0.8                  # the schedule moved by the stall
    assert _most_in(sends[1:], 0.005) <= 0.005 * RATE * 2 + 16


@pytest.mark.parametrize("transport,call", [("live", "prog_test_run"), ("tc", "prog_test_run_skb")])
def test_a_run_cut_short_by_a_signal_is_not_an_error(monkeypatch, transport, call):
    """EINTR (a child's exit signalled this process mid-run): what went is counted in the
    program's map; the call returns. Any other failure still raises. Either transport."""
    import errno
    from nfx.errors import BpfError
    from nfx.loader import bpfsys
    g = object.__new__(Generator)
    g.fn, g.frame, g.ifindex, g.batch_size = type("F", (), {"fd": -1})(), b"", 1, 64
    g.transport = transport
    g._sent_on = lambda cpu: 0
    code = [errno.EINTR]

    def run(*a, **kw):
        e = BpfError("BPF_PROG_TEST_RUN failed")
        e.errno = code[0]
        raise e
    monkeypatch.setattr(bpfsys, call, run)
    g._call(100)
    code[0] = errno.EINVAL
    with pytest.raises(BpfError):
        g._call(100)


def test_what_the_transport_refused_stays_owed():
    """tc: a call whose clones were refused (a full veth ring) sent fewer than asked; the loop
    sends the rest later, so the run sends its whole schedule."""
    g = object.__new__(Generator)
    g.max_burst = 64
    asked = []

    def call(n, cpu=None):
        asked.append(n)
        return n // 2 if len(asked) % 3 == 0 else n      # every third call half refused
    g._call = call
    sent, calls, _ = g._loop(RATE, SECS, None, 0.001)
    assert sent == RATE * SECS and sum(asked) > sent


def test_an_interface_that_takes_nothing_is_an_error(monkeypatch):
    from nfx.errors import BpfError
    from nfx.traffic import gen
    monkeypatch.setattr(gen, "REFUSED_S", 0.05)
    g = object.__new__(Generator)
    g.max_burst = 64
    g._call = lambda n, cpu=None: 0
    with pytest.raises(BpfError, match="took no packet"):
        g._loop(RATE, SECS, None, 0.001)
