"""A move's window kept free of the garbage collector's pauses.

CPython's cyclic collector stops every thread of the agent while it walks the objects it
tracks. In an agent under a 100k pps move its full collections took 7-15 ms (traced with
gc.callbacks, ~30-44k objects: the loaded program, BCC's tables, the move's own), and one
that lands inside a group's window holds that group's packets for as long. So:
- settle() once the agent is up: what it has loaded so far is permanent (gc.freeze), and no
  later collection walks it;
- enter() and leave() around a move's session: the collector stays off while any session
  runs here. What a move makes and drops is freed by reference counting as usual; the few
  cycles it leaves wait for the collector's next run after the last session."""
import gc
import threading

_lock = threading.Lock()
_open = 0


def settle() -> None:
    gc.collect()
    gc.freeze()


def enter() -> None:
    global _open
    with _lock:
        _open += 1
        if _open == 1:
            gc.disable()


def leave() -> None:
    global _open
    with _lock:
        if _open == 0:
            return
        _open -= 1
        if _open == 0:
            gc.enable()
