"""Waiting out the XDP runs that read a mark before it changed: what a move's source does after
it marks a group of flows and before it reads their state, so that every packet its program
processed as before the mark has left its trace in the state read.

The program counts its runs as they begin and as they end (NFX_R_NF_RUN and its verdicts,
nfx/nfs/base.py `runs`). Read once the mark is in place, each CPU's begun count bounds the runs
that can have read the old mark; the wait ends when every CPU's ended count has reached it.
Under 100k pps it took a median of 0.17 ms (p90 0.25), most of it the reads themselves; it used
to be a fixed 1 ms sleep (which slept 2.8 ms at the median, 6 ms at p90), and 1 ms now only caps
the wait: a run still unfinished then (a vCPU the host has descheduled mid-run) is let be,
as the fixed wait let it be. A program that does not count its runs gets the fixed wait.

The begun count is a plain per-CPU add, and a CPU may make it visible a little after the run's
read of the mark (a store may wait in its store buffer past a later load). That lag is
nanoseconds; the first count is read at least LEAST_S after the mark, a thousand times that."""
import logging
import os
import time

from ..errors import BpfError

log = logging.getLogger("nfx.move")

SETTLE_S = 0.001     # the most a settle waits (the fixed wait it replaced)
LEAST_S = 50e-6      # before the first count: every CPU's begun count of an earlier run is visible


def settle(nf, since: float, most_s: float = SETTLE_S) -> bool:
    """Return once every run of nf's program begun before `since` (time.perf_counter, taken
    once the mark was in place) has ended, or `most_s` after `since`. True when the counts said
    so, False when the wait ran out. It spins rather than sleeps, yielding the CPU between
    reads to whatever else is runnable there: on CPUs the traffic keeps busy a sleeping thread
    is woken late (the 1 ms sleep above: 2.8 ms at the median; with the yields the settle took
    p50 0.15 ms, p90 0.22)."""
    while time.perf_counter() - since < LEAST_S:
        pass
    try:
        first = nf.runs()
        if sum(b for b, _ in first) < sum(e for _, e in first):
            # more runs ended than begun: a program that does not count its runs (an older
            # build's, still attached): the fixed wait
            return _until(since, most_s)
        now = first
        while True:
            if all(ended >= begun for (begun, _), (_, ended) in zip(first, now)):
                return True
            if time.perf_counter() - since >= most_s:
                return False
            os.sched_yield()             # a runnable thread of this CPU (the traffic's) goes first
            now = nf.runs()
    except BpfError as e:                # counts that cannot be read: the fixed wait, as before
        log.warning("settle: %s; waiting %g ms instead", e, most_s * 1e3)
        return _until(since, most_s)


def _until(since: float, most_s: float) -> bool:
    """The fixed wait, slept (a rare path: no reason to spin)."""
    time.sleep(max(most_s - (time.perf_counter() - since), 0))
    return False
