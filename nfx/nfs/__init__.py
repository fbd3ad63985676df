"""The network functions: one class per kind, and a running instance opened from its registry entry."""
from ..errors import NfxError
from ..registry import NfNode
from .ids import IDS
from .nat import NAT

KINDS = {"nat": NAT, "ids": IDS}


def nf_class(kind: str):
    try:
        return KINDS[kind]
    except KeyError:
        raise NfxError(f"unknown NF kind {kind!r}", hint=" or ".join(KINDS)) from None


def open_node(node: NfNode):
    """The instance a registry entry describes, reopened from its pins."""
    return nf_class(node.kind).open(node.name, node.pin)
