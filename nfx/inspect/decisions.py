"""The orchestration loop's decisions, live, for the inspector. `nfx orchestrate run` appends
every condition it raises or clears, every plan (its actions, each with its reason) and every
action's outcome to its decision log (one JSON object a line, nfx/orchestrate/timeline.py); this
thread follows the log and puts each line on the inspector's queue as stream `decisions` of
instance `loop`. A log that appears later (the loop starts after the inspector) or starts over
(a new run) is picked up."""
import json
import os
import queue
import threading
import time

from ..paths import decision_log
from .watch import put

LOOP = "loop"          # the inspector's name for the orchestration loop's events


class DecisionTail(threading.Thread):
    def __init__(self, testbed: str, out: queue.Queue, stop: threading.Event, backlog: int = 10,
                 poll_s: float = 0.1):
        super().__init__(name="inspect-decisions", daemon=True)
        self.path = decision_log(testbed)
        self.out, self.stop = out, stop
        self.backlog, self.poll_s = backlog, poll_s

    def _put(self, ev: dict) -> None:
        put(self.out, self.stop, {"instance": LOOP, "stream": "decisions", "ts": ev.get("ts") or time.time(), **ev})

    def run(self) -> None:
        f, ino, rest = None, None, b""
        try:
            while not self.stop.is_set():
                try:
                    st = os.stat(self.path)
                except FileNotFoundError:
                    st = None
                if st is not None and (f is None or st.st_ino != ino or st.st_size < f.tell()):
                    if f is not None:
                        f.close()
                    f, ino, rest = open(self.path, "rb"), st.st_ino, b""
                    self._start(f)
                if f is not None:
                    chunk = f.read()
                    if chunk:
                        lines = (rest + chunk).split(b"\n")
                        rest = lines.pop()
                        for line in lines:
                            self._line(line)
                        continue
                self.stop.wait(self.poll_s)
        finally:
            if f is not None:
                f.close()

    def _start(self, f) -> None:
        """The last `backlog` lines of a log found running: what the loop decided just before."""
        lines = f.read().split(b"\n")
        tail = lines[-1]
        for line in lines[:-1][-self.backlog:]:
            self._line(line)
        f.seek(f.tell() - len(tail))

    def _line(self, line: bytes) -> None:
        try:
            ev = json.loads(line)
        except ValueError:
            return                       # a line cut short by a crash: skipped
        if isinstance(ev, dict):
            self._put(ev)
