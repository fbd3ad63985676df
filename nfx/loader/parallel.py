"""Copies of one compiled program loaded by threads while the caller goes on.

The kernel's verifier is most of what an instance costs to build (1.9 s for the NAT, 0.6 s for
the IDS on this machine) and runs in the BPF_PROG_LOAD syscall, which ctypes makes without the
GIL: two threads verify two copies on two CPUs at once. Only copies of an Image (loader/image.py)
load here; a program this process has not compiled (and no child compiles for it) is left to
the caller, because BCC compiles in threads crash."""
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .bpfsys import PROG_TYPES
from .compile import compiled_image


class Preloads:
    """`count` copies of program `name` (with `defines`), function `fn_name` of `kind` (xdp or
    tc), loaded in the
    background from the moment the object is made: take() hands them out in order, as
    (object, function) or None when there is no compiled Image to copy (compile as usual).
    close() waits for the threads and closes every copy nobody took."""

    def __init__(self, name: str, defines: dict | None, fn_name: str, kind: str, count: int,
                 workers: int | None = None):
        self.name, self.defines, self.fn_name, self.prog_type = name, defines, fn_name, PROG_TYPES[kind]
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(count, workers or os.cpu_count() or 1)),
                                       thread_name_prefix=f"load-{name}")
        self.lock = threading.Lock()
        self.futures: list[Future] = [self.pool.submit(self._load) for _ in range(count)]
        self.taken = 0
        self.load_s: list[float] = []     # each copy's load (its verifier run most of it), as they end

    def _load(self):
        img = compiled_image(self.name, self.defines)
        if img is None:
            return None
        t = time.perf_counter()
        copy = img.load()
        try:
            got = copy, copy.load_func(self.fn_name.encode(), self.prog_type)
        except BaseException:
            copy.cleanup()
            raise
        self.load_s.append(time.perf_counter() - t)
        return got

    def take(self):
        """The next copy, waiting for it; the verifier's rejection raises here (BpfError)."""
        with self.lock:
            if self.taken >= len(self.futures):
                return None
            fut = self.futures[self.taken]
            self.taken += 1
        return fut.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for fut in self.futures[self.taken:]:
            if fut.cancelled() or fut.exception() is not None:
                continue
            got = fut.result()
            if got is not None:
                got[0].cleanup()
        self.taken = len(self.futures)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
