"""Flow filters: `proto=udp src=10.0.1.0/24 sport=1000-2000 dst=10.0.2.2 dport=9000` (any subset,
space- or comma-separated; empty or `all` matches everything). A flow matches in either
direction, so both directions of a connection travel together. Matching is vectorised over the
raw key arrays that batch export returns."""
import ipaddress
import re
from dataclasses import dataclass

import numpy as np

from .errors import BadInput
from .flows import ip_to_be, proto_num

FLOW_DTYPE = np.dtype([("saddr", "<u4"), ("daddr", "<u4"), ("sport", "<u2"), ("dport", "<u2"),
                       ("proto", "u1"), ("pad", "u1", 3)])
FIELDS = {"proto", "src", "dst", "sport", "dport"}


@dataclass(frozen=True)
class Filter:
    proto: int = 0
    src: tuple[int, int] = (0, 0)          # (net, mask) as stored in keys
    dst: tuple[int, int] = (0, 0)
    sport: tuple[int, int] = (0, 65535)    # host-order inclusive range
    dport: tuple[int, int] = (0, 65535)
    text: str = "all"

    @property
    def everything(self) -> bool:
        return self == Filter(text=self.text)

    # ---- vectorised matching ----
    def _one_way(self, saddr, daddr, sport, dport, proto):
        m = np.ones(len(saddr), dtype=bool)
        if self.proto:
            m &= proto == self.proto
        if self.src[1]:
            m &= (saddr & self.src[1]) == self.src[0]
        if self.dst[1]:
            m &= (daddr & self.dst[1]) == self.dst[0]
        if self.sport != (0, 65535):
            m &= (sport >= self.sport[0]) & (sport <= self.sport[1])
        if self.dport != (0, 65535):
            m &= (dport >= self.dport[0]) & (dport <= self.dport[1])
        return m

    def match_flows(self, keys: np.ndarray) -> np.ndarray:
        """keys: FLOW_DTYPE records (network order). Bidirectional."""
        if self.everything:
            return np.ones(len(keys), dtype=bool)
        sp, dp = keys["sport"].byteswap(), keys["dport"].byteswap()
        fwd = self._one_way(keys["saddr"], keys["daddr"], sp, dp, keys["proto"])
        rev = self._one_way(keys["daddr"], keys["saddr"], dp, sp, keys["proto"])
        return fwd | rev

    def match_hosts(self, addrs: np.ndarray) -> np.ndarray:
        """A host matches if it could be either end of a matching flow."""
        if self.everything:
            return np.ones(len(addrs), dtype=bool)
        m = np.zeros(len(addrs), dtype=bool)
        for net, mask in (self.src, self.dst):
            m |= (addrs & mask) == net
        return m


def _prefix(v: str) -> tuple[int, int]:
    try:
        net = ipaddress.IPv4Network(v, strict=False)
    except ValueError:
        raise BadInput(f"filter: not an IPv4 address or prefix: {v!r}") from None
    return ip_to_be(str(net.network_address)), ip_to_be(str(net.netmask))


def _ports(v: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", v)
    if not m:
        raise BadInput(f"filter: not a port or port range: {v!r}")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if not 0 <= lo <= hi <= 65535:
        raise BadInput(f"filter: port range out of order or out of 0-65535: {v!r}")
    return lo, hi


def parse(text: str | None) -> Filter:
    text = (text or "").strip()
    if text in ("", "all", "*"):
        return Filter()
    kw = {}
    for word in re.split(r"[\s,]+", text):
        if "=" not in word:
            raise BadInput(f"filter: {word!r} is not key=value (keys: {', '.join(sorted(FIELDS))})")
        k, v = word.split("=", 1)
        if k not in FIELDS:
            raise BadInput(f"filter: unknown key {k!r} (keys: {', '.join(sorted(FIELDS))})")
        if k in kw:
            raise BadInput(f"filter: {k} given twice")
        if v in ("*", "any"):
            continue
        if k == "proto":
            kw[k] = proto_num(v)
        elif k in ("src", "dst"):
            kw[k] = _prefix(v)
        else:
            kw[k] = _ports(v)
    return Filter(text=text, **kw)


def flows_view(ctypes_array, n: int) -> np.ndarray:
    return np.frombuffer(ctypes_array, dtype=FLOW_DTYPE, count=n)
