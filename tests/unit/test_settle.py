"""The wait after a mark changes (nfx/agent/settle.py), on made-up run counts: it ends as soon
as every CPU has ended the runs begun before its first read, waits while one has not, and gives
up at its cap as the fixed wait did; a program that does not count its runs, or counts that cannot
be read, get the fixed wait."""
import time

from nfx.agent import settle as S


class Counts:
    """An NF whose runs() walks through a script of per-CPU (begun, ended) readings."""

    def __init__(self, script):
        self.script, self.reads = list(script), 0

    def runs(self):
        self.reads += 1
        return self.script[min(self.reads, len(self.script)) - 1]


def test_nothing_in_flight_ends_at_the_first_read():
    nf = Counts([[(10, 10), (7, 7)]])
    t0 = time.perf_counter()
    assert S.settle(nf, t0)
    assert nf.reads == 1 and time.perf_counter() - t0 < S.SETTLE_S


def test_a_run_in_flight_is_waited_for_and_later_runs_are_not():
    # cpu 1 had a run in flight at the first read (begun 7, ended 6); it ends at the third read,
    # when cpu 0 has begun others meanwhile (12 begun, 11 ended): those began after the mark
    nf = Counts([[(10, 10), (7, 6)], [(11, 11), (7, 6)], [(12, 11), (8, 7)]])
    assert S.settle(nf, time.perf_counter(), most_s=1.0)
    assert nf.reads == 3


def test_a_run_that_never_ends_is_let_be_at_the_cap():
    nf = Counts([[(10, 10), (7, 6)]])
    t0 = time.perf_counter()
    assert not S.settle(nf, t0)
    assert S.SETTLE_S <= time.perf_counter() - t0 < S.SETTLE_S + 0.05 and nf.reads > 1


def test_the_first_read_waits_for_the_counts_to_be_visible():
    nf = Counts([[(1, 1)]])
    t0 = time.perf_counter()
    S.settle(nf, t0)
    assert time.perf_counter() - t0 >= S.LEAST_S


def test_a_program_that_does_not_count_its_runs_gets_the_fixed_wait():
    nf = Counts([[(0, 500), (0, 20)]])
    t0 = time.perf_counter()
    assert not S.settle(nf, t0)
    assert time.perf_counter() - t0 >= S.SETTLE_S and nf.reads == 1


def test_counts_that_cannot_be_read_get_the_fixed_wait(caplog):
    from nfx.errors import BpfError

    class Broken:
        def runs(self):
            raise BpfError("no map")
    t0 = time.perf_counter()
    assert not S.settle(Broken(), t0)
    assert time.perf_counter() - t0 >= S.SETTLE_S and "no map" in caplog.text
