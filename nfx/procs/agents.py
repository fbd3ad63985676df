"""Start and stop agent processes. Each one is in the testbed registry (its log path, then its
pid) before it runs, so `testbed down` ends it; they run detached (own session), so they
outlive the command that started them. An agent is recognised by its command line, never by
a pid alone: a reused pid is not ours."""
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import AlreadyExists, NfxError, NotFound, Timeout
from ..paths import REPO, RUN_DIR
from ..registry import AGENT_PORT, load

AGENT_DIR = RUN_DIR / "agents"
_children: dict[int, subprocess.Popen] = {}      # started by this process: reaped when they end


def log_path(testbed: str, instance: str) -> Path:
    return AGENT_DIR / testbed / f"{instance}.log"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a process; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def gone(pid: int, start: int | None = None) -> bool:
    """Has the process ended, its files closed? (A dying process loses its command line before
    it closes its sockets; a zombie has closed them.) `start`: the start time it had, so a reused
    pid counts as gone."""
    _reap(pid)
    st = _stat(pid)
    if st is None or (start is not None and st[1] != start):
        return True
    # the leader turns zombie while other threads may still be exiting with the shared files
    # (the listening socket) open: gone when every thread is
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if raw[raw.rindex(")") + 2] not in "ZX":
            return False
    return True


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    st = _stat(pid)
    start = st[1] if st else None
    end = time.monotonic() + timeout
    while not gone(pid, start):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def _reap(pid: int) -> None:
    p = _children.get(pid)
    if p is not None:
        if p.poll() is not None:
            _children.pop(pid, None)
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_agent(pid: int | None, testbed: str, instance: str | None = None) -> bool:
    """Is `pid` a live agent of this testbed (and instance)? Zombies have no command line."""
    if not pid:
        return False
    _reap(pid)
    cmd = _cmdline(pid)
    if "nfx.agent" not in cmd:
        return False
    args = dict(zip(cmd, cmd[1:]))
    return args.get("--testbed") == testbed and (instance is None or args.get("--instance") == instance)


def find(testbed: str, instance: str | None = None) -> list[int]:
    """Agents of a testbed (or one instance) by their command lines, whoever started them."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid() and is_agent(int(d), testbed, instance):
            out.append(int(d))
    return sorted(out)


def pid_of(rec, instance: str) -> int | None:
    """The live agent's pid: the registered one, else any found by command line."""
    pid = ((rec.get("nodes", {}).get(instance) or {}).get("agent") or {}).get("pid")
    if is_agent(pid, rec["name"], instance):
        return pid
    found = find(rec["name"], instance)
    return found[0] if found else None


def _nf_names(rec) -> list[str]:
    return [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]


def _check(rec, instance: str, built: bool = True) -> dict:
    if instance not in _nf_names(rec):
        raise NotFound(f"no NF instance {instance!r} in testbed {rec['name']}",
                       hint=f"instances: {', '.join(_nf_names(rec)) or 'none'}")
    node = rec["nodes"][instance]
    if ("pin" not in node and built) or instance not in (rec.get("mgmt") or {}).get("agents", {}):
        raise NotFound(f"instance {instance} of {rec['name']} is not built yet (no pins or management address)")
    return node


def spawn(rec, instance: str, held: bool = False) -> tuple[subprocess.Popen, int]:
    """Register, then start one agent; returns the process and the read end of its ready pipe.
    `held` (see Held): the instance need not be built yet."""
    p, r, _ = _spawn(rec, instance, held)
    return p, r


def _spawn(rec, instance: str, held: bool) -> tuple[subprocess.Popen, int, int | None]:
    node = _check(rec, instance, built=not held)
    pid = pid_of(rec, instance)
    if pid:
        raise AlreadyExists(f"the agent of {instance} already runs (pid {pid})",
                            hint=f"nfx nf stop --name {rec['name']} --instance {instance}")
    log = log_path(rec["name"], instance)
    node["agent"] = {"pid": None, "log": str(log), "addr": rec["mgmt"]["agents"][instance],
                     "port": AGENT_PORT, "started": time.time()}
    if instance not in rec.get("created", {}).get("agent", []):
        rec.register("agent", instance)
    else:
        rec.save()
    log.parent.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    go_r, go_w = os.pipe() if held else (None, None)
    hold = ["--go-fd", str(go_r)] if held else []
    try:
        with open(log, "ab") as lf:
            p = subprocess.Popen([sys.executable, "-m", "nfx.agent", "--testbed", rec["name"], "--instance", instance,
                                  "--log", str(log), "--ready-fd", str(w), *hold],
                                 stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, pass_fds=(w, go_r) if held else (w,),
                                 start_new_session=True, cwd=str(REPO))
    except BaseException:
        os.close(r)
        if held:
            os.close(go_w)
        raise
    finally:
        os.close(w)
        if held:
            os.close(go_r)
    _children[p.pid] = p
    node["agent"]["pid"] = p.pid
    rec.save()
    return p, r, go_w


class Held:
    """An agent started before its instance is built (nfx nf add): the process does its imports
    (a few hundred ms) while the program loads, then waits; `go()` once the instance's pins are
    on the record lets it read the record, open them and serve, and waits until it does.
    Dropped without go (close(), or the process that holds it ending), it exits at once."""

    def __init__(self, rec, instance: str):
        self.rec, self.instance = rec, instance
        self.p, self._ready, self._go = _spawn(rec, instance, held=True)

    def go(self, timeout: float = 30.0) -> dict:
        try:
            os.write(self._go, b"go\n")
        finally:
            self.close()
        return wait_ready(self.rec, self.instance, self.p, self._ready, timeout)

    def close(self) -> None:
        if self._go is not None:
            os.close(self._go)
            self._go = None


def _tail(path: str, lines: int = 6) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(rec, instance: str, p: subprocess.Popen, rfd: int, timeout: float = 30.0) -> dict:
    try:
        buf, deadline = b"", time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            # poll, not select: a caller with over 1023 fds open (a test run's BPF objects) is fine
            waiting = select.poll()
            waiting.register(rfd, select.POLLIN)
            if not waiting.poll(max(left, 0) * 1000):
                _kill([p.pid], rec["name"], instance)
                raise Timeout(f"the agent of {instance} did not come up within {timeout:g} s",
                              hint=f"its log: {log_path(rec['name'], instance)}")
            got = os.read(rfd, 128)
            if not got:
                break
            buf += got
    finally:
        os.close(rfd)
    if not buf.startswith(b"ready"):
        try:
            rc = p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        log = log_path(rec["name"], instance)
        raise NfxError(f"the agent of {instance} failed to start (exit {rc}):\n{_tail(str(log))}",
                       hint=f"its log: {log}")
    return rec["nodes"][instance]["agent"]


def start(rec, instances: list[str] | str, timeout: float = 30.0) -> dict[str, dict]:
    """Start agents (in parallel) and wait until each serves."""
    if isinstance(instances, str):
        instances = [instances]
    spawned = [(i, *spawn(rec, i)) for i in instances]
    out = {}
    for i, p, rfd in spawned:
        out[i] = wait_ready(rec, i, p, rfd, timeout)
    return out


def _kill(pids, testbed: str, instance: str | None, timeout: float = 5.0) -> int:
    """SIGTERM, then SIGKILL; how many of `pids` are gone (their sockets closed). All are
    signalled before any is waited for: a testbed's agents shut down side by side."""
    start = {}
    for pid in pids:
        if is_agent(pid, testbed, instance):
            st = _stat(pid)
            start[pid] = st[1] if st else None
    left = set(start)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        left = {p for p in left if not gone(p, start[p])}
        for pid in list(left):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                left.discard(pid)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            left = {p for p in left if not gone(p, start[p])}
            if not left:
                return len(pids)
            time.sleep(0.01)
    left = {p for p in left if not gone(p, start[p])}
    return len(pids) - len(left)


def stop(rec, instance: str, timeout: float = 5.0) -> dict:
    """End an instance's agent (the registered pid and any other found by command line)."""
    if instance not in _nf_names(rec):
        raise NotFound(f"no NF instance {instance!r} in testbed {rec['name']}",
                       hint=f"instances: {', '.join(_nf_names(rec)) or 'none'}")
    pids = set(find(rec["name"], instance))
    reg = ((rec["nodes"][instance].get("agent")) or {}).get("pid")
    if is_agent(reg, rec["name"], instance):
        pids.add(reg)
    stopped = _kill(sorted(pids), rec["name"], instance, timeout) == len(pids)
    if rec["nodes"][instance].get("agent"):
        rec["nodes"][instance]["agent"]["pid"] = None
        rec.save()
    return {"instance": instance, "pids": sorted(pids), "stopped": stopped, "was_running": bool(pids)}


def stop_all(name: str, rec=None) -> int:
    """For testbed down: every agent of the testbed, registered or not; then their logs."""
    pids = set(find(name))
    if rec is not None:
        for inst in rec.get("created", {}).get("agent", []):
            pid = ((rec.get("nodes", {}).get(inst) or {}).get("agent") or {}).get("pid")
            if is_agent(pid, name, inst):
                pids.add(pid)
    n = _kill(sorted(pids), name, None)
    d = AGENT_DIR / name
    if d.exists():
        for f in d.iterdir():
            f.unlink(missing_ok=True)
        d.rmdir()
    return n


def status(rec, instance: str) -> dict:
    a = (rec["nodes"].get(instance) or {}).get("agent") or {}
    pid = pid_of(rec, instance)
    return {"pid": pid, "alive": pid is not None, "addr": a.get("addr") or (rec.get("mgmt") or {}).get("agents", {}).get(instance),
            "port": a.get("port", AGENT_PORT), "log": a.get("log")}


def restart_stale(name: str, instance: str, report: dict, restart: bool = True) -> None:
    """An agent opens the instance's maps once, when it starts: after an upgrade it holds the
    objects that were replaced (report["repinned"]). Restart it (it re-adopts the pins), or say so
    in report["warnings"]. Sets report["agent"] (old and new pid) if it restarted one."""
    report["agent"] = None
    try:
        pid = pid_of(load(name), instance)
    except Exception:                       # noqa: BLE001 - no agent support: nothing to do
        return
    repinned = report.get("repinned", [])
    if not pid or not repinned:
        return
    stale = f"still holds the replaced {', '.join(repinned)}"
    if not restart:
        report["warnings"].append(f"the agent of {instance} (pid {pid}) opened its maps before the upgrade and "
                                  f"{stale}: restart it (nfx nf stop / nfx nf start)")
        return
    t = time.perf_counter()
    try:
        stop(load(name), instance)
        new = start(load(name), instance)[instance]
    except NfxError as e:
        report["warnings"].append(f"restarting the agent of {instance} (pid {pid}, which {stale}) failed: {e}")
        return
    report["agent"] = {"old_pid": pid, "pid": new["pid"], "restart_ms": round((time.perf_counter() - t) * 1e3, 1)}
