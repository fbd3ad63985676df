"""Errors on the wire and from netlink (no root): every NfxError type survives to_wire/from_wire
with its message, hint and exit code; a netlink errno becomes the NfxError a caller can act on."""
import errno
import os

import pytest

from nfx import errors as E
from nfx.loader import netlink


@pytest.mark.parametrize("cls", sorted(E._TYPES.values(), key=lambda c: c.__name__))
def test_every_type_round_trips(cls):
    obj = E.to_wire(cls("it broke", hint="do this"), op="move")
    assert obj == {"error": "it broke", "type": cls.__name__, "code": cls.exit_code, "hint": "do this", "op": "move"}
    with pytest.raises(cls, match="^nf1: it broke$") as e:
        E.from_wire(obj, "nf1: ")
    assert type(e.value) is cls and e.value.hint == "do this"


def test_unknown_types_and_foreign_exceptions():
    class Private(E.NotFound):
        pass
    assert E.to_wire(Private("x"))["type"] == "NfxError"          # a name the other side cannot know
    obj = E.to_wire(ValueError("bad"))
    assert obj == {"error": "internal error: ValueError: bad", "type": "NfxError", "code": 1}
    with pytest.raises(E.NfxError, match="unknown error"):
        E.from_wire({"type": "Nope"})


@pytest.mark.parametrize("code, cls", [
    (errno.EEXIST, E.AlreadyExists), (errno.ENODEV, E.NotFound), (errno.ENOENT, E.NotFound),
    (errno.EPERM, E.NeedRoot), (errno.EOPNOTSUPP, E.KernelFeature), (errno.ENETUNREACH, E.NfxError),
    (errno.EINVAL, E.NfxError)])
def test_netlink_errno_to_error(code, cls):
    e = netlink.error(code, "add veth a (peer b) in netns x")
    assert type(e) is cls
    assert str(e) == f"cannot add veth a (peer b) in netns x: {os.strerror(code)}"
    assert e.exit_code == cls.exit_code
