"""The agent's heartbeats (issue 14): a datagram every `every_ms` to the failure detection unit
(nfx/control/failover.py) over the management network, from a process of the agent's own
(beater.py), so a stopped or killed agent falls silent at once while a busy one keeps beating.

    heartbeat {to: "addr:port", every_ms, name}   start beating (again: to the new address), as
                                            `name` (how the FDU knows it: nf1@B across a join)
    heartbeat {to: null}                    stop

A beat is MAGIC, the sequence number, then the instance's name."""
import socket
import struct
import subprocess
import sys

from ..errors import BadInput

HEARTBEAT_OPS = ("heartbeat",)
MAGIC = b"nfhb"
BEAT = struct.Struct("!4sI")
MIN_MS, MAX_MS = 1, 10_000
RT_PRIO = 10


def beat(seq: int, instance: str) -> bytes:
    return BEAT.pack(MAGIC, seq & 0xFFFFFFFF) + instance.encode()


def parse_beat(data: bytes) -> tuple[int, str] | None:
    """(seq, instance) of a beat, None for anything else."""
    if len(data) <= BEAT.size or data[:4] != MAGIC:
        return None
    _, seq = BEAT.unpack_from(data)
    try:
        return seq, data[BEAT.size:].decode()
    except UnicodeDecodeError:
        return None


class _Beater:
    """The beater process (beater.py): it alone sends, so no thread of the agent delays a beat."""

    def __init__(self, instance: str, to: tuple[str, int], every_s: float):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nfx.agent.beater", "--to", f"{to[0]}:{to[1]}", "--every-ms", str(every_s * 1e3),
             "--instance", instance], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> dict:
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        return {"pid": self.proc.pid, "exit": rc}


class HeartbeatOps:
    """Mixed into the agent (nfx/agent/server.py)."""
    _beater: _Beater | None = None

    def op_heartbeat(self, sock, r, req) -> dict:
        to = req.get("to")
        old, self._beater = self._beater, None
        last = old.stop() if old else None
        if to is None:
            return {"beating": False, "last": last}
        every_ms = req.get("every_ms", 10)
        if isinstance(every_ms, bool) or not isinstance(every_ms, (int, float)) or not MIN_MS <= every_ms <= MAX_MS:
            raise BadInput(f"heartbeat: every_ms is {MIN_MS}..{MAX_MS}, not {every_ms!r}")
        try:
            host, port = to.rsplit(":", 1)
            socket.inet_aton(host)                 # an IPv4 address, not a name to resolve
            dest = (host, int(port))
            if not 1 <= dest[1] <= 65535:
                raise ValueError
        except (AttributeError, ValueError, OSError):
            raise BadInput(f"heartbeat: to is \"address:port\", not {to!r}") from None
        name = req.get("name") or self.instance
        if not isinstance(name, str) or len(name) > 64:
            raise BadInput("heartbeat: name is the instance's name as the FDU knows it (up to 64 characters)")
        self._beater = _Beater(name, dest, every_ms / 1e3)
        return {"beating": True, "to": to, "every_ms": every_ms, "last": last}
