"""Domain errors; the CLI maps each to a message on stderr and an exit code."""


class NfxError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class BadInput(NfxError):
    exit_code = 2


class NotFound(NfxError):
    exit_code = 3


class AlreadyExists(NfxError):
    exit_code = 4


class NeedRoot(NfxError):
    exit_code = 5


class KernelFeature(NfxError):
    """The kernel or toolchain lacks something nfx needs."""
    exit_code = 6


class BpfError(NfxError):
    exit_code = 7


class Timeout(NfxError):
    exit_code = 8


class Refused(NfxError):
    """An agent refused a request: missing or wrong testbed token."""
    exit_code = 9


class AgentDown(NotFound):
    """An NF instance's agent does not answer (not started, killed, or gone with its testbed)."""


class EtcdDown(NotFound):
    """The etcd holding a testbed's global state does not answer (its hint names the URL tried)."""


# ---- the codec: an error as a JSON object on the wire (agent ERROR frames, controller HTTP bodies) ----
_TYPES = {c.__name__: c for c in (NfxError, BadInput, NotFound, AlreadyExists, NeedRoot, KernelFeature, BpfError,
                                  Timeout, Refused, AgentDown, EtcdDown)}


def to_wire(e: BaseException, op: str | None = None) -> dict:
    """An exception as a JSON object: its message, type name, exit code, hint (and the op it ended)."""
    if isinstance(e, NfxError):
        d = {"error": str(e), "type": type(e).__name__ if type(e).__name__ in _TYPES else "NfxError",
             "code": e.exit_code}
        if e.hint:
            d["hint"] = e.hint
    else:
        d = {"error": f"internal error: {type(e).__name__}: {e}", "type": "NfxError", "code": 1}
    if op:
        d["op"] = op
    return d


def from_wire(obj: dict, where: str = "") -> None:
    """Raise the NfxError a `to_wire` object stands for; `where` prefixes the message (e.g. "nf0: ")."""
    cls = _TYPES.get(obj.get("type"), NfxError)
    msg = str(obj.get("error", "unknown error"))
    raise cls(f"{where}{msg}", hint=obj.get("hint"))
