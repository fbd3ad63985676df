"""A private single-node etcd for tests and for `nfx cluster up` without --etcd: /usr/bin/etcd on free
loopback ports (never the default 2379/2380, so a system etcd does not clash) with a temporary data
dir, up once /health answers, terminated (then killed) and its data dir removed by stop()."""
import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref

from ..errors import KernelFeature, NfxError, Timeout
from .client import Etcd

_RUNNING: "weakref.WeakSet[LocalEtcd]" = weakref.WeakSet()
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child before exec: SIGTERM when the thread that started it ends (a killed test run)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def find_etcd() -> str:
    """The etcd binary's path ($NFX_ETCD, else etcd on PATH, else /usr/bin/etcd)."""
    for p in (os.environ.get("NFX_ETCD"), shutil.which("etcd"), "/usr/bin/etcd"):
        if p and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise KernelFeature("no etcd binary (looked at $NFX_ETCD, PATH and /usr/bin/etcd)",
                        hint="run scripts/bootstrap.sh (it installs Debian's etcd-server), or set NFX_ETCD to an etcd binary")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalEtcd:
    """`with LocalEtcd() as e: Etcd(e.url)`. Short heartbeat/election times make it elect itself
    fast and let leases as short as 1 s be granted as asked (etcd's minimum TTL is 1.5 elections).
    With `die_with_parent` (the default) the kernel ends etcd when the thread that started it ends,
    even if Python is killed; `nfx cluster up`, whose etcd outlives the command, passes False and
    detach()es it. `ns`/`host`: run it in that network namespace (ip netns exec), listening on
    that address there (a testbed's management network, where its agents reach it); `enter`
    makes this process's connections to it there (Etcd's `enter`)."""

    def __init__(self, start_timeout_s: float = 15.0, heartbeat_ms: int = 50, election_ms: int = 500,
                 data_dir: str | None = None, name: str = "nfx", die_with_parent: bool = True,
                 ns: str | None = None, host: str = "127.0.0.1", enter=None):
        self.binary = find_etcd()
        self.ns, self.host, self.enter = ns, host, enter
        self.die_with_parent = die_with_parent
        self.start_timeout_s, self.heartbeat_ms, self.election_ms, self.name = start_timeout_s, heartbeat_ms, election_ms, name
        self._own_dir = data_dir is None
        self.dir = data_dir or tempfile.mkdtemp(prefix="nfx-etcd-")
        self.log_path = os.path.join(self.dir, "etcd.log")
        self.proc: subprocess.Popen | None = None
        self.client_port = self.peer_port = 0
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def client(self, timeout: float = 5.0) -> Etcd:
        return Etcd(self.url, timeout, enter=self.enter)

    def info(self) -> dict:
        return {"pid": self.proc.pid if self.proc else None, "url": self.url, "dir": self.dir, "log": self.log_path}

    def _start(self):
        for _ in range(3):                       # another process may take a port we picked before etcd binds it
            self.client_port, self.peer_port = free_port(), free_port()
            while self.peer_port == self.client_port:
                self.peer_port = free_port()
            if self._launch():
                return
        raise NfxError(f"etcd did not start (ports kept clashing); its log:\n{_tail(self.log_path)}")

    def _launch(self, fresh: bool = True) -> bool:
        """Start etcd and wait for /health: True once it answers, False on a port clash."""
        peer = f"http://{self.host}:{self.peer_port}"
        data = os.path.join(self.dir, "data")
        if fresh:
            shutil.rmtree(data, ignore_errors=True)
        cmd = (["ip", "netns", "exec", self.ns] if self.ns else []) + [self.binary, "--name", self.name, "--data-dir", data,
               "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new" if fresh else "existing",
               "--heartbeat-interval", str(self.heartbeat_ms), "--election-timeout", str(self.election_ms),
               "--logger", "zap", "--log-outputs", "stderr"]
        with open(self.log_path, "ab") as log:
            # its own session: a Ctrl-C to the test run or CLI does not kill it before stop() does
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                         preexec_fn=_die_with_parent if self.die_with_parent else None)
        _RUNNING.add(self)
        c = Etcd(self.url, timeout=1.0, enter=self.enter)
        end = time.monotonic() + self.start_timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                if "address already in use" in _tail(self.log_path, 40):
                    return False
                raise NfxError(f"etcd exited with status {self.proc.returncode} while starting ({' '.join(cmd)}); "
                               f"the end of its log {self.log_path}:\n{_tail(self.log_path)}")
            try:
                if c.health():
                    return True
            except NfxError:
                pass
            time.sleep(0.05)
        raise Timeout(f"etcd at {self.url} did not answer /health within {self.start_timeout_s} s; "
                      f"the end of its log {self.log_path}:\n{_tail(self.log_path)}")

    def stop(self, grace_s: float = 3.0) -> None:
        """Terminate etcd (SIGKILL after `grace_s`) and remove the data dir if this made it. Idempotent."""
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        _RUNNING.discard(self)
        if self._own_dir and self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL etcd without cleaning up (a crash, for tests); stop() still removes its dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        """Start a kill()ed etcd again on the same ports with the data it had (an outage, for tests)."""
        if self.running:
            raise NfxError(f"etcd at {self.url} is running: kill() it first")
        if not os.path.isdir(os.path.join(self.dir, "data")):
            raise NfxError(f"etcd at {self.url}: its data dir is gone (stop() removed it)")
        if not self._launch(fresh=False):
            raise NfxError(f"etcd cannot listen on {self.url} again (the port was taken meanwhile); its log:\n"
                           f"{_tail(self.log_path)}")

    def detach(self) -> dict:
        """Let etcd outlive this process (for `nfx cluster up`): info() for stop_detached() later."""
        _RUNNING.discard(self)
        return self.info()

    @staticmethod
    def stop_detached(info: dict, grace_s: float = 3.0) -> bool:
        """Stop an etcd that detach() described (only if that pid is still that etcd) and remove its
        dir; whether it was running."""
        pid, d = info.get("pid"), info.get("dir")
        alive = False
        try:
            with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
                alive = d is not None and d.encode() in f.read()       # not a reused pid
        except (OSError, TypeError, ValueError):
            pass
        if alive:
            os.killpg(pid, signal.SIGTERM)
            end = time.monotonic() + grace_s
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
                time.sleep(0.05)
            if os.path.exists(f"/proc/{pid}"):
                os.killpg(pid, signal.SIGKILL)
        if d and os.path.basename(d).startswith("nfx-etcd-"):
            shutil.rmtree(d, ignore_errors=True)
        return alive

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "LocalEtcd":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@atexit.register
def _stop_all():
    """No etcd outlives the Python process that started it (a test run that forgot stop())."""
    for e in list(_RUNNING):
        e.stop()
