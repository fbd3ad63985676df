"""A clock for a command made of steps (nfx nf add|remove report their time by step): each
step's own time, a step run inside another counted once, in the inner one."""
import time
from contextlib import contextmanager


class StepClock:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []      # per open step: time its inner steps took

    @contextmanager
    def step(self, name: str):
        t = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            took = time.perf_counter() - t
            inner = self._inner.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + took - inner
            if self._inner:
                self._inner[-1] += took

    def ms(self) -> dict[str, float]:
        """Each step's milliseconds, and the whole command's as total_ms."""
        out = {k: round(v * 1e3, 1) for k, v in self.seconds.items()}
        out["total"] = round((time.perf_counter() - self.t0) * 1e3, 1)
        return out


def timed_record(rec, clock: StepClock):
    """`rec` (a registry.Testbed) whose saves count as the clock's "registry" step, wherever
    they happen (an agent's start saves the record too)."""
    class Timed(type(rec)):
        def save(self):
            with clock.step("registry"):
                super().save()
    return Timed(rec)
