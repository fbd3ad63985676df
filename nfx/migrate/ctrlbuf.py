"""OpenNF's controller-side packet buffer (nfx.migrate.opennf)."""
import threading
import time
from collections import deque

from .. import layout as L
from ..errors import NfxError


class ControllerBuffer:
    """OpenNF's controller-side packet buffer: packets src sent up, held per flow until dst has
    their state, then handed to dst in arrival order. For op it also tracks src's IBC per side:
    what src sends after its cut, the switch delivered to dst already, so it is dropped.
    Handing over runs on its own thread (a packet-out takes the control link's time), in the
    order packets were let go: picking and queueing them is one step under the lock."""

    def __init__(self, op: bool):
        self.op = op
        self.lock = threading.Lock()
        self.held: deque = deque()
        self.cut = [False, False]
        self.forward_to = None            # once set, packets go straight through
        self.released_keys: set[bytes] | None = set()
        self.peak = self.total = self.dropped_after_cut = self.received = self.injected = 0
        self.max_hold_us = 0.0
        self.out: deque = deque()         # (target, packets) to hand over, in order
        self.cv = threading.Condition(self.lock)
        self.busy = False
        self.error: Exception | None = None
        self._thread: threading.Thread | None = None

    def take(self, pkts: list) -> None:
        with self.lock:
            self.received += len(pkts)
            for p in pkts:
                if p.kind == L.BufKind.IBC:
                    self.cut[p.side] = True
                    continue
                if self.op and self.cut[p.side]:
                    self.dropped_after_cut += 1
                    continue
                self.total += 1
                self.held.append(p)
            self.peak = max(self.peak, len(self.held))
            self._queue(self._ready_locked())

    def _ready_locked(self) -> list:
        if self.forward_to is None:
            return []
        if self.released_keys is None:            # everything may go
            out = list(self.held)
            self.held.clear()
            return out
        out = [p for p in self.held if p.key in self.released_keys]
        if out:
            self.held = deque(p for p in self.held if p.key not in self.released_keys)
        return out

    def release(self, dst, keys: list | None = None) -> int:
        """Hand held packets to dst: all (keys None) or those of flows whose state is in (ER)."""
        with self.lock:
            self.forward_to = dst
            if keys is None:
                self.released_keys = None
            elif self.released_keys is not None:
                self.released_keys |= {bytes(k) for k in keys}
            ready = self._ready_locked()
            self._queue(ready)
        return len(ready)

    def _queue(self, pkts: list) -> None:
        if not pkts:
            return
        self.out.append((self.forward_to, pkts))
        if self._thread is None:
            self._thread = threading.Thread(target=self._hand_over, daemon=True, name="ctrl-out")
            self._thread.start()
        self.cv.notify_all()

    def _hand_over(self) -> None:
        while True:
            with self.lock:
                self.cv.wait_for(lambda: self.out)
                target, batch = self.out.popleft()
                while self.out and self.out[0][0] is target:    # one request for all that waits
                    batch = batch + self.out.popleft()[1]
                if target is None:
                    return
                self.busy = True
            try:
                target.inject(batch)
                held = (time.monotonic_ns() - min(p.ts_ns for p in batch)) / 1e3   # kernel stamps: CLOCK_MONOTONIC
                with self.lock:
                    self.injected += len(batch)
                    self.max_hold_us = max(self.max_hold_us, held)
            except Exception as e:
                with self.lock:
                    self.error = self.error or e
            finally:
                with self.lock:
                    self.busy = False
                    self.cv.notify_all()

    def flush(self, timeout: float) -> None:
        """Wait until everything let go has been handed over."""
        with self.lock:
            if not self.cv.wait_for(lambda: not self.out and not self.busy, timeout):
                raise TimeoutError(f"the controller's packets were not all handed over within {timeout:g} s")
            if self.error is not None:
                raise NfxError(f"handing the controller's packets over failed: {self.error}")

    def take_back(self) -> list:
        """Everything not yet handed over (a move called off), in order; nothing goes on after."""
        with self.lock:
            self.forward_to = None
            out = [p for _, b in self.out for p in b] + list(self.held)
            self.out.clear()
            self.held.clear()
            return out

    def stop(self) -> None:
        with self.lock:
            self.out.append((None, []))
            self.cv.notify_all()

    def cut_complete(self) -> bool:
        return all(self.cut)
