"""Flows for the inspector: one-at-a-time matching of events against an nfx filter, and the
per-flow rows (top N by packets) made from a `get` of an instance's per-flow state."""
import ctypes as ct
import struct
import time

from .. import layout as L
from ..flows import be_to_ip, be_to_port, key_fields, make_key
from ..filter import Filter

_ADDRS = struct.Struct("<II")          # saddr, daddr as the kernel stores them (Filter's form)
_PORTS = struct.Struct("!HHB")         # sport, dport in network order, proto
KEY_SIZE = ct.sizeof(L.FlowKey)


class FlowMatch:
    """Filter.match_flows/match_hosts for one flow or host at a time (events arrive one by one).
    NAT's reverse entries are keyed by the outside flow: `learn` ties such a key to its inside
    flow (from the statelet that created it) so it matches as its connection does."""

    def __init__(self, flt: Filter | None = None):
        self.f = flt or Filter()
        self.everything = self.f.everything
        self._cache: dict[bytes, bool] = {}
        self._alias: dict[bytes, bytes] = {}       # outside key (nat_rev) -> inside flow key

    def _one_way(self, sa, da, sp, dp, proto) -> bool:
        f = self.f
        return ((not f.proto or proto == f.proto) and (sa & f.src[1]) == f.src[0] and (da & f.dst[1]) == f.dst[0]
                and f.sport[0] <= sp <= f.sport[1] and f.dport[0] <= dp <= f.dport[1])

    def key(self, raw: bytes) -> bool:
        """A raw flow key (struct nfx_flow_key bytes), either direction."""
        if self.everything:
            return True
        hit = self._cache.get(raw)
        if hit is None:
            sa, da = _ADDRS.unpack_from(raw)
            sp, dp, proto = _PORTS.unpack_from(raw, 8)
            hit = self._one_way(sa, da, sp, dp, proto) or self._one_way(da, sa, dp, sp, proto)
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[raw] = hit
        return hit

    def flow(self, d: dict) -> bool:
        """A flow as key_fields() writes it (alerts, statelet values)."""
        return self.everything or self.key(flow_bytes(d))

    def host(self, addr: str) -> bool:
        """A host matches if it could be either end of a matching flow."""
        if self.everything:
            return True
        a = _ADDRS.unpack(bytes(make_key(addr, "0.0.0.0", 0, 0, 0))[:8])[0]
        return any((a & mask) == net for net, mask in (self.f.src, self.f.dst))

    def learn(self, outside: bytes, inside: bytes) -> None:
        if len(self._alias) > 200_000:
            self._alias.clear()
        self._alias[outside] = inside

    def inside_of(self, outside: bytes) -> bytes | None:
        return self._alias.get(outside)


def flow_bytes(d: dict) -> bytes:
    return bytes(make_key(d["src"], d["dst"], d["sport"], d["dport"], d["proto"]))


def flow_text(d: dict) -> str:
    return f"{d['proto']} {d['src']}:{d['sport']} > {d['dst']}:{d['dport']}"


# ---- per-flow rows from a get of scope per-flow ---------------------------------------------------
def _entries(c, classes: dict):
    """(key bytes, value struct) of one chunk; nothing if its value size is not one we know."""
    cls = classes.get(c.value_size)
    if cls is None or c.key_size != KEY_SIZE or c.ncpu != 1:
        return
    keys, vals = bytes(c.keys), bytes(c.values)
    for i in range(c.count):
        yield keys[i * KEY_SIZE:(i + 1) * KEY_SIZE], cls.from_buffer_copy(vals, i * c.value_size)


_NAT = {ct.sizeof(L.NatEntry): L.NatEntry, ct.sizeof(L.NatEntryV2): L.NatEntryV2}
_IDS = {ct.sizeof(L.IdsFlow): L.IdsFlow}


def _nat(chunks) -> dict[bytes, dict]:
    fwd, rev = {}, {}
    for c in chunks:
        if c.table in ("nat_fwd", "nat_rev"):
            (fwd if c.table == "nat_fwd" else rev).update(_entries(c, _NAT))
    out = {}
    for k, v in fwd.items():
        r = rev.get(bytes(v.peer))
        out[k] = {"pkts_out": v.pkts, "pkts_in": r.pkts if r else 0, "bytes": v.bytes + (r.bytes if r else 0),
                  "public": f"{be_to_ip(v.peer.daddr)}:{be_to_port(v.peer.dport)}",
                  "last_ns": max(v.last_seen_ns, r.last_seen_ns if r else 0),
                  "tcp_flags": v.tcp_flags | (r.tcp_flags if r else 0)}
    return out


def _ids(chunks) -> dict[bytes, dict]:
    out = {}
    for c in chunks:
        if c.table == "ids_flows":
            for k, v in _entries(c, _IDS):
                out[k] = {"pkts": v.pkts, "bytes": v.bytes, "sig_hits": v.sig_hits, "last_ns": v.last_ns,
                          "tcp_flags": v.tcp_flags}
    return out


class FlowTable:
    """Per-flow rows of one instance, with packet rates between two polls."""

    def __init__(self, kind: str, top: int):
        self.kind, self.top = kind, top
        self.prev: dict[bytes, int] = {}
        self.t_prev: float | None = None

    def rows(self, chunks) -> dict:
        now = time.monotonic()
        flows = _nat(chunks) if self.kind == "nat" else _ids(chunks)
        pkts = {k: v.get("pkts", v.get("pkts_out", 0) + v.get("pkts_in", 0)) for k, v in flows.items()}
        dt = now - self.t_prev if self.t_prev is not None else None
        best = sorted(pkts, key=pkts.__getitem__, reverse=True)[:self.top]
        now_ns = time.monotonic_ns()          # the datapath's clock (CLOCK_MONOTONIC)
        rows = []
        for k in best:
            v = flows[k]
            last = v.pop("last_ns")
            rate = (pkts[k] - self.prev[k]) / dt if dt and k in self.prev else None
            rows.append({"flow": key_fields(L.FlowKey.from_buffer_copy(k)), "pkts": pkts[k], **v,
                         "pps": None if rate is None else round(max(rate, 0.0), 1),
                         "idle_s": round(max(now_ns - last, 0) / 1e9, 3) if last else None})
        self.prev, self.t_prev = pkts, now
        return {"count": len(flows), "rows": rows}
