"""An agent's move window and the garbage collector (nfx/agent/pauses.py): off while any move
session runs, back on when the last one ends; what the agent loaded is frozen once."""
import gc

from nfx.agent import pauses


def test_the_collector_is_off_while_any_window_is_open():
    assert gc.isenabled()
    try:
        pauses.enter()
        pauses.enter()
        assert not gc.isenabled()
        pauses.leave()
        assert not gc.isenabled()         # one session still runs
        pauses.leave()
        assert gc.isenabled()
        pauses.leave()                    # a leave too many changes nothing
        assert gc.isenabled()
        pauses.enter()
        assert not gc.isenabled()
    finally:
        while not gc.isenabled():
            pauses.leave()


def test_settle_freezes_what_is_loaded():
    try:
        pauses.settle()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
