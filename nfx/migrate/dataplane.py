"""Shim until the lead's cleanup: the gate's writes moved to nfx/gate.py (Gate), the move packet
and flow-key codecs to nfx/packets.py. These adapters keep migrate/session.py, migrate/remote.py,
agent/moves.py and the tests working unedited."""
from .. import layout as L
from ..gate import FRAME0, RELEASE_TRIES, Gate, Releaser, check_ports  # noqa: F401
from ..packets import HDR, Packet, decode, flow_keys, keys_blob, keys_from_blob, pack, unpack  # noqa: F401
from ..state.filter import Filter, parse


def packet_ring(nf):
    return Gate(nf).ring()


def set_marks(nf, keys: list, action: L.Action, epoch: int = 0, peer: int = 0) -> int:
    return Gate(nf).mark(keys, action, epoch=epoch, peer=peer)


def clear_marks(nf, keys: list | None = None) -> int:
    return Gate(nf).unmark(keys)


def marks(nf) -> dict[bytes, L.Mark]:
    return Gate(nf).marks()


def move_cfg(nf) -> L.MoveCfg:
    return Gate(nf).move_cfg()


def set_move_cfg(nf, **fields) -> L.MoveCfg:
    return Gate(nf).set_move_cfg(**fields)


def move_state(nf) -> L.MoveState:
    return Gate(nf).move_state()


def reset_move(nf) -> None:
    Gate(nf).reset_move()


def set_filter(nf, slot: int, flt: Filter | str | None, action: L.Action, epoch: int = 0, peer: int = 0) -> None:
    """The wildcard filter of a move (its tag is the move's epoch); text only from callers not yet
    passing the Filter object."""
    Gate(nf).set_filter(slot, flt if isinstance(flt, Filter) else parse(flt), action, peer=peer, tag=epoch)


def clear_filter(nf, slot: int) -> None:
    Gate(nf).clear_filter(slot)
