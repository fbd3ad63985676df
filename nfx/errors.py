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
