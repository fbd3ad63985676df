"""A move's critical window at real-time priority (SLiM's `rt`, nfx's option): the calling
thread runs SCHED_FIFO until it leaves the window. On a machine whose CPUs the traffic keeps
busy, an agent at normal priority waits its turn behind the data plane's own processes while
the destination holds packets; at real-time priority it runs when it is runnable. The kernel's
real-time throttling (sched_rt_runtime_us) still leaves the rest of the machine its share, and
the window is bounded by the move's timeout."""
import logging
import os

log = logging.getLogger("nfx.move")
RT_PRIORITY = 10


def enter_rt() -> bool:
    """This thread to SCHED_FIFO; False (and a warning) where the kernel refuses."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
        return True
    except OSError as e:
        log.warning("cannot run the move's critical window at real-time priority: %s", e)
        return False


def leave_rt() -> None:
    """This thread back to normal scheduling (harmless if it never left it)."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass
