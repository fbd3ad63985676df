"""How a table's values change layout in a hot upgrade: `Conversion`, the vectorised field-by-
field copy `by_field`, the built-in named conversions the CLI offers, and -D flag parsing."""
import ctypes as ct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import layout as L
from ..errors import BadInput


@dataclass
class Conversion:
    """How one table's values change layout. `fn` takes the old values as a (rows, old value
    size) uint8 array and returns (rows, new value size) uint8: vectorised, one call per pass.
    `value` is the ctypes mirror of the new value (optional; with it pass 2 merges field by
    field); `counters` are fields pass 2 adds the old program's increments to; `maxes` keep the
    larger; `ors` are ORed. Without `value`, an entry the new program changed after the swap
    keeps the new program's value whole."""
    fn: Callable[[np.ndarray], np.ndarray]
    value: type | None = None
    counters: tuple[str, ...] = ()
    maxes: tuple[str, ...] = ()
    ors: tuple[str, ...] = ()


def by_field(old: type, new: type, **fill) -> Callable[[np.ndarray], np.ndarray]:
    """A vectorised conversion between two ctypes layouts: fields with the same name and size
    are copied, others are set to fill.get(name, 0)."""
    of = {name: (getattr(old, name).offset, getattr(old, name).size) for name, *_ in old._fields_}
    plan = []
    for name, *_ in new._fields_:
        off, size = getattr(new, name).offset, getattr(new, name).size
        src = of.get(name)
        if src and src[1] == size:
            plan.append((off, size, src[0], None))
        else:
            plan.append((off, size, None, int(fill.get(name, 0))))
    osz, nsz = ct.sizeof(old), ct.sizeof(new)

    def convert(vals: np.ndarray) -> np.ndarray:
        if vals.ndim != 2 or vals.shape[1] != osz:
            raise BadInput(f"expected ({osz}-byte {old.__name__} rows), got shape {vals.shape}")
        out = np.zeros((len(vals), nsz), np.uint8)
        for off, size, src, const in plan:
            if src is not None:
                out[:, off:off + size] = vals[:, src:src + size]
            elif const:
                out[:, off:off + size] = np.frombuffer(const.to_bytes(size, "little"), np.uint8)
        return out

    return convert


def _nat_conv(old, new):
    return Conversion(by_field(old, new), new, counters=("pkts", "bytes"),
                      maxes=("last_seen_ns",) + (("max_len",) if new is L.NatEntryV2 else ()),
                      ors=("tcp_flags",))


# named conversions for the CLI: name -> (defines it implies, {table: Conversion})
CONVERSIONS = {
    "nat-v2": ({"NFX_NAT_V2": 1}, {t: _nat_conv(L.NatEntry, L.NatEntryV2) for t in ("nat_fwd", "nat_rev")}),
    "nat-v1": ({"NFX_NAT_V2": None}, {t: _nat_conv(L.NatEntryV2, L.NatEntry) for t in ("nat_fwd", "nat_rev")}),
}


def conversions(conversion) -> dict[str, Conversion]:
    """{table: Conversion} from None, a CONVERSIONS name, or {table: function or Conversion}."""
    if conversion is None:
        return {}
    if isinstance(conversion, str):
        if conversion not in CONVERSIONS:
            raise BadInput(f"no conversion named {conversion!r}", hint=f"known: {', '.join(CONVERSIONS)}")
        return dict(CONVERSIONS[conversion][1])
    out = {}
    for name, c in dict(conversion).items():
        if isinstance(c, Conversion):
            out[name] = c
        elif callable(c):
            out[name] = Conversion(c)
        else:
            raise BadInput(f"conversion for {name!r} is neither a function nor a Conversion")
    return out


def implied_defines(conversion, defines: dict | None) -> dict | None:
    """A named conversion's defines, under the caller's own."""
    if not isinstance(conversion, str):
        return defines
    return {**CONVERSIONS.get(conversion, ({}, None))[0], **(defines or {})}


def parse_defines(items: list[str] | None) -> dict:
    """['K=V', 'K'] -> {'K': 'V', 'K': 1}."""
    out = {}
    for it in items or []:
        k, eq, v = it.partition("=")
        out[k.strip()] = v if eq else 1
    return out
