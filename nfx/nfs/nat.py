"""NAT: configuration, the mapping table as people read it, and the idle-entry sweeper.
The datapath (bpf/nat.bpf.c) also evicts an idle mapping when its flow or port is reused; the
sweeper reclaims the ones nobody touches again."""
import ctypes as ct
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, field

from .. import layout as L
from ..errors import BadInput
from ..flows import be_to_ip, be_to_port, ip_to_be, key_fields, PROTO_NAMES
from ..loader.bpfsys import possible_cpus
from ..loader.spec import MapSpec
from .base import NF, NF_MAPS

NS = 1_000_000_000


def parse_pool(pool: str) -> tuple[int, int]:
    """'10.0.2.100-10.0.2.103' or '10.0.2.100/30' → (first address as host int, count)."""
    try:
        if "-" in pool:
            a, b = (ipaddress.IPv4Address(x.strip()) for x in pool.split("-", 1))
            if int(b) < int(a):
                raise ValueError
            return int(a), int(b) - int(a) + 1
        net = ipaddress.IPv4Network(pool, strict=False)
        return int(net.network_address), net.num_addresses
    except ValueError:
        raise BadInput(f"bad NAT pool {pool!r}: use A.B.C.D-A.B.C.E or a prefix") from None


def pool_hash(h):
    """nat_alloc's paired-pooling hash of an inside address (host order), in u32 arithmetic: the
    host leaves by pool address pool_hash(h) % pool_count. `h` an int, or a numpy array (worked
    in uint64, so the product does not wrap early)."""
    if hasattr(h, "astype"):
        h = h.astype("u8")
    h = h ^ (h >> 16)
    h = (h * 0x45D9F3B) & 0xFFFFFFFF
    return h ^ (h >> 16)


@dataclass
class NatConfig:
    inside: str = "10.0.1.0/24"
    pool: str = "10.0.2.100-10.0.2.103"
    port_lo: int = 20000
    port_hi: int = 59999
    timeouts_s: dict = field(default_factory=lambda: {"udp": 30, "tcp": 300, "tcp_closed": 10, "icmp": 30})
    host_quota: int = 0           # most mappings one inside address may hold; 0 = no limit

    def to_struct(self) -> L.NatCfg:
        try:
            net = ipaddress.IPv4Network(self.inside, strict=False)
        except ValueError:
            raise BadInput(f"bad inside prefix {self.inside!r}") from None
        if not (1 <= self.port_lo <= self.port_hi <= 65535):
            raise BadInput(f"bad port range {self.port_lo}-{self.port_hi}")
        if not 0 <= self.host_quota <= 0x7FFFFFFF:
            raise BadInput(f"bad per-host mapping quota {self.host_quota}")
        base, count = parse_pool(self.pool)
        c = L.NatCfg(host_quota=self.host_quota, inside_net=ip_to_be(str(net.network_address)), inside_mask=ip_to_be(str(net.netmask)),
                     pool_base=base, pool_count=count, port_lo=self.port_lo, port_hi=self.port_hi,
                     ncpu=possible_cpus())
        for name, t in self.timeouts_s.items():
            c.timeout_ns[L.NatTimeout[name.upper()]] = int(t * NS)
        return c


def monotonic_ns() -> int:
    # bpf_ktime_get_ns() is CLOCK_MONOTONIC
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class NAT_MAPS(NF_MAPS):
    # alt_values: the NFX_NAT_V2 build's entries (a hot upgrade, nfx/upgrade/)
    nat_fwd = MapSpec(L.FlowKey, L.NatEntry, alt_values=(L.NatEntryV2,))
    nat_rev = MapSpec(L.FlowKey, L.NatEntry, alt_values=(L.NatEntryV2,))
    nat_ports = MapSpec(L.NatPort, L.FlowKey)
    nat_cfg = MapSpec(L.u32, L.NatCfg)
    nat_cursor = MapSpec(L.u32, L.u64)
    # mappings per inside address (host_quota); absent from instances built before the quota
    nat_hosts = MapSpec(L.u32, ct.c_int32, optional=True)


class NAT(NF):
    kind = "nat"
    MAPS = NAT_MAPS
    # a mapping: its nat_fwd and nat_rev entries and its nat_ports entry
    FLOW_BYTES = 2 * (ct.sizeof(L.FlowKey) + ct.sizeof(L.NatEntry)) + ct.sizeof(L.NatPort) + ct.sizeof(L.FlowKey)

    def configure(self, config: NatConfig | L.NatCfg | None) -> None:
        """A NatConfig, or the raw struct of a running instance (nfx nf add copies one's, with
        another port slice)."""
        raw = config if isinstance(config, L.NatCfg) else (config or NatConfig()).to_struct()
        self.maps.nat_cfg.put(L.u32(0), raw)

    def config(self) -> L.NatCfg:
        return self.maps.nat_cfg.get(L.u32(0))

    def mappings(self) -> list[dict]:
        """One record per connection: inside flow, public address/port, both directions' counters."""
        now = monotonic_ns()
        n, keys, vals = self.maps.nat_fwd.export()
        rev = self.maps.nat_rev
        out = []
        for i in range(n):
            k, v = keys[i], vals[i]
            r = rev.get(v.peer)
            rec = key_fields(k)
            rec.update({
                "public": f"{be_to_ip(v.peer.daddr)}:{be_to_port(v.peer.dport)}",
                "pkts_out": v.pkts, "bytes_out": v.bytes,
                "pkts_in": r.pkts if r else 0, "bytes_in": r.bytes if r else 0,
                "idle_s": round((now - max(v.last_seen_ns, r.last_seen_ns if r else 0)) / NS, 3),
                "tcp_flags": v.tcp_flags | (r.tcp_flags if r else 0),
                "complete": r is not None,
            })
            out.append(rec)
        return out

    def sweep(self, now_ns: int | None = None) -> int:
        """Evict idle connections (both entries and the port), as the datapath would on reuse."""
        now = now_ns if now_ns is not None else monotonic_ns()
        cfg = self.config()
        to = {p: cfg.timeout_ns[i] for p, i in (("udp", L.NatTimeout.UDP), ("icmp", L.NatTimeout.ICMP))}
        n, keys, vals = self.maps.nat_fwd.export()
        rev = self.maps.nat_rev
        dead_fwd, dead_rev, dead_port = [], [], []
        for i in range(n):
            k, v = keys[i], vals[i]
            r = rev.get(v.peer)
            last = max(v.last_seen_ns, r.last_seen_ns if r else 0)
            flags = v.tcp_flags | (r.tcp_flags if r else 0)
            if k.proto == 6:
                limit = cfg.timeout_ns[L.NatTimeout.TCP_CLOSED if flags & (L.TCP_FIN | L.TCP_RST) else L.NatTimeout.TCP]
            else:
                limit = to.get(PROTO_NAMES.get(k.proto, "udp"), cfg.timeout_ns[L.NatTimeout.UDP])
            if now - last > limit:
                dead_fwd.append(k)
                dead_rev.append(v.peer)
                dead_port.append(L.NatPort(addr=v.peer.daddr, port=v.peer.dport, proto=k.proto))
        # per entry: a batch delete stops at the first key the datapath already evicted
        for m, ks in ((self.maps.nat_ports, dead_port), (self.maps.nat_rev, dead_rev), (self.maps.nat_fwd, dead_fwd)):
            for k in ks:
                m.delete(k)
        self.recount_hosts()
        return len(dead_fwd)

    def flow_count(self) -> int | None:
        """Mappings held: the sum of nat_hosts (one entry per inside address, kept by the
        datapath as it makes and evicts mappings and settled by recount_hosts after sweeps and
        moves), so the count costs a walk of the hosts, not of every mapping. None for an
        instance built before the quota map."""
        m = self.maps.nat_hosts
        if m is None:
            return None
        n, _, vals = m.export()
        return sum(max(0, vals[i]) for i in range(n))   # a count may dip below 0 for a moment

    def state_changed(self) -> None:
        self.recount_hosts()               # moved-in or deleted mappings count for the quota

    def recount_hosts(self) -> dict[str, int]:
        """Set every inside address's mapping count (the quota's) to what nat_fwd holds. The
        datapath keeps the counts as it makes and evicts mappings; this settles what it cannot
        see: the sweeper's evictions and flows moved in or out by state transfer."""
        m = self.maps.nat_hosts
        if m is None:                      # an instance built before the quota existed
            return {}
        n, keys, _ = self.maps.nat_fwd.export()
        held = Counter(keys[i].saddr for i in range(n))
        hn, hkeys, _ = m.export()
        for i in range(hn):
            if hkeys[i] not in held:
                m.delete(L.u32(hkeys[i]))
        for addr, cnt in held.items():
            m.put(L.u32(addr), ct.c_int32(cnt))
        return {be_to_ip(a): c for a, c in held.items()}
