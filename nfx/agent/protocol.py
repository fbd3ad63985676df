"""What agent and client share: the port, the ops, request limits, and errors as ERROR frames
(nfx/agent/PROTOCOL.md). Frames are nfx/state/wire.py's, on a TCP socket."""
import json

from .. import errors as E
from ..registry import AGENT_PORT as PORT  # noqa: F401 (the agents' port, defined with the registry)
from ..state import wire

REQUEST_MAX = 1 << 20          # a JSON request frame larger than this is refused unread
FRAME_MAX = 1 << 30            # any frame an agent reads (a put's chunks): larger ends the connection
HANDSHAKE_S = 5.0              # a new connection's first accepted request must be in by then
IDLE_S = 300.0                 # an authenticated connection may wait this long for the next request
PENDING_MAX = 256              # connections not yet authenticated; past this the oldest is closed
OPS = ("ping", "info", "stats", "get", "put", "del", "push", "mark", "unmark", "marks", "filter",
       "subscribe")
ACTIONS = {"process": 0, "statelet": 1, "buffer": 2, "redirect": 3, "to_ctrl": 4, "drop": 5, "dup_hold": 6}

def error_frame(e: BaseException, op: str | None = None) -> list:
    return wire.encode_json(E.to_wire(e, op), wire.ERROR)


def action_num(a) -> int:
    if isinstance(a, bool):
        raise E.BadInput(f"bad action {a!r}")
    if isinstance(a, int) and a in ACTIONS.values():
        return a
    if isinstance(a, str) and a.lower().replace("-", "_") in ACTIONS:
        return ACTIONS[a.lower().replace("-", "_")]
    raise E.BadInput(f"unknown action {a!r}: one of {', '.join(ACTIONS)}")


def jsonable(obj):
    """Events may carry bytes or other objects: make them JSON (bytes as hex, the rest as str)."""
    def default(o):
        if isinstance(o, (bytes, bytearray, memoryview)):
            return bytes(o).hex()
        if hasattr(o, "__dict__"):
            return o.__dict__
        return str(o)
    return json.loads(json.dumps(obj, default=default))
