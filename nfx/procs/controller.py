"""Start, find and stop a testbed's controller process (registered in the testbed's registry)."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from .. import registry
from ..errors import NfxError, NotFound, Timeout, from_wire
from ..paths import RUN_DIR


def log_path(testbed: str):
    """The controller process's log."""
    return RUN_DIR / f"controller-{testbed}.log"


def moves_path(testbed: str):
    """The move log: one JSON line per move."""
    return RUN_DIR / f"moves-{testbed}.jsonl"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"nfx.control" in f.read()
    except OSError:
        return False


def start(name: str, ctrl_delay_ms: float = 0.0, rec=None, ctrl_rate_mbit: float = 0.0) -> dict:
    """Start the controller (once). `rec`: the caller's registry record, updated in place so a
    later save of it keeps the controller's entry."""
    rec = rec if rec is not None else registry.load(name)
    cur = rec.get("controller") or {}
    if _alive(cur.get("pid")):
        return cur
    p = subprocess.Popen([sys.executable, "-m", "nfx.control", "--testbed", name, "--ctrl-delay-ms", str(ctrl_delay_ms),
                          "--ctrl-rate-mbit", str(ctrl_rate_mbit)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    rec["controller"] = {"pid": p.pid, "port": None, "ctrl_delay_ms": ctrl_delay_ms, "ctrl_rate_mbit": ctrl_rate_mbit}
    rec.save()        # registered before it is known to work, so down can always stop it
    line = p.stdout.readline().strip()
    if not line.isdigit():
        p.kill()
        raise NfxError(f"the controller for {name} did not start (see {log_path(name)})")
    rec["controller"]["port"] = int(line)
    rec.save()
    return rec["controller"]


def remove_logs(name: str) -> None:
    """For testbed down: the controller's log and the move log go with the testbed."""
    for p in (log_path(name), moves_path(name)):
        p.unlink(missing_ok=True)


def stop(name: str, rec=None) -> bool:
    rec = rec or registry.load(name)
    pid = (rec.get("controller") or {}).get("pid")
    if not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 2.5
    while _alive(pid):
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    return True


def call(name: str, method: str, path: str, body: dict | None = None, timeout: float = 120.0) -> dict:
    """One northbound request; errors come back as the matching NfxError."""
    rec = registry.load(name)
    c = rec.get("controller") or {}
    if not _alive(c.get("pid")) or not c.get("port"):
        raise NotFound(f"testbed {name} has no running controller", hint=f"nfx controller start --name {name}")
    req = urllib.request.Request(f"http://127.0.0.1:{c['port']}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {rec.get('token', '')}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        obj = json.loads(e.read() or b"{}")
        default = {400: "BadInput", 401: "Refused", 403: "Refused", 413: "BadInput"}.get(e.code, "NfxError")
        from_wire({"error": obj.get("error", str(e)), "type": obj.get("type") or default,
                     "hint": obj.get("hint")})
    except (urllib.error.URLError, TimeoutError) as e:
        raise Timeout(f"the controller of {name} did not answer: {e}") from None


def tell_instances(name: str, quiet: bool = False) -> bool:
    """The testbed's instances changed (nfx nf add|remove): its controller re-reads them (POST
    /instances). False when none runs (one that starts later reads them then). `quiet`: on the
    way out of a failure, the controller's own error is only logged."""
    try:
        call(name, "POST", "/instances", {})
    except NotFound:
        return False
    except NfxError as e:
        if not quiet:
            raise
        logging.getLogger("nfx.controller").warning("the controller of %s did not take the change of instances: %s",
                                                    name, e)
        return False
    return True
