"""DiST's in-band control packets' tuples (IBC, one per side): which flow's 5-tuple carries the
cut. Both sides of a move need them: the controller (OpenNF-ordered moves) and the source's
agent (DiST). The frames themselves are built by nfx/frames.py."""
import ipaddress
import socket
from typing import TYPE_CHECKING

from . import layout as L
from .flows import reverse

if TYPE_CHECKING:
    from .state.filter import Filter


def ibc_keys(flows: list, outside: list, flt: "Filter") -> list:
    """One IBC per side, [(side, key)], carrying a moved flow's tuple so the move's rules and
    marks apply; with no flow to take it from, a tuple made from the filter (ibc_synthetic)."""
    out = {bytes(o) for o in outside}
    inside = next((k for k in flows if bytes(k) not in out), None)
    if inside is None:
        return list(ibc_synthetic(flt))
    return [(L.SIDE_IN, inside), (L.SIDE_OUT, outside[0] if outside else reverse(inside))]


def ibc_synthetic(flt: "Filter") -> tuple:
    """The IBCs of a move with no flow of its own to cut (none matches the filter when the
    source holds them): a tuple that matches the filter, wildcards filled, and its reverse.

    Why that is enough, and flows born during the move keep their order: the cut is per side,
    not per flow. Each side's IBC enters the switch on the port the filter's packets enter by,
    behind them in the same FIFO, and the filter's rule (the same rule for every flow it
    matches) sends it where those packets go: in phase 1 to both instances. At the source it
    meets the move's filter (or its mark) like any packet of the filter and is passed on behind
    them. So it marks the same point in both streams for every flow of the filter, including
    one born a moment before or after it: at dst, that flow's switch-path packets before the
    cut are dropped (the source passed them on), those after it wait until everything the
    source passed on before its cut has gone. Skipping the cut instead would be safe only if
    no flow could be born during the move, which live traffic never proves.

    On the outside of a partial filter a NAT's return traffic is steered by exact rules on the
    public tuples, of which there are none yet: the reverse tuple then gets an exact rule and a
    mark at both instances like a moved flow's public tuple (the caller adds it to the outside
    keys and the explicit marks), so it too follows a rule of the move."""
    def host(net_mask, fill):
        net, mask = net_mask
        return net if mask else int.from_bytes(ipaddress.IPv4Address(fill).packed, "little")

    def port(r, fill):
        return socket.htons(r[0] if r[0] == r[1] else fill)
    k = L.FlowKey(saddr=host(flt.src, "192.0.2.1"), daddr=host(flt.dst, "198.51.100.1"),
                  sport=port(flt.sport, 65534), dport=port(flt.dport, 9), proto=flt.proto or 17)
    return (L.SIDE_IN, k), (L.SIDE_OUT, reverse(k))
