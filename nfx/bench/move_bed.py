"""The move bench's testbed: a sharp testbed with two NAT instances sized for the flow count,
the traffic rig with source addresses planned for the NAT's pool, and `Bed`, which moves
everything through the testbed's controller and puts the state back on nf0 between cells."""
import ipaddress
import math
import secrets
from contextlib import contextmanager

from ..agent.client import AgentClient
from ..procs import controller
from ..errors import BadInput, NfxError
from ..nfs.nat import pool_hash
from .. import registry
from ..testbed import builder, topology
from ..traffic.report import measure
from ..traffic.rig import gen_and_sink_hosts, rig

# NF reason counters that mean a packet went nowhere (not v_drop: buffered and to-controller
# packets are copied to the ring and then dropped; nor r_op_pre_ibc: op drops the switch's copy
# of what the source already has, by design)
DROP_STATS = ("v_aborted", "r_gate_drop", "r_buf_ring_full", "r_hold_stale", "r_redirect_fail",
              "r_release_bad", "r_no_port", "r_nat_no_mapping", "r_nat_ports_exhausted", "r_nat_map_full")
WARM_PPS = 200_000           # warm-up and per-cell refresh: one packet per flow at this rate
PORT_USE = 0.75              # fill at most this much of one public address's port range
POOL = "10.0.2.100-10.0.2.107"   # the NAT's public addresses in the bench's testbed


def addressing(flows: int, host_ip: str, inside: str, pool_count: int, span: int) -> tuple[str, int]:
    """(first source address, flows per address) for `flows` connections: one address (the
    generator host's own) while a public address's port range holds them comfortably, else k
    consecutive inside addresses that the paired pooling sends out of k different public addresses."""
    per = int(span * PORT_USE)
    k = max(1, math.ceil(flows / per))
    if k == 1:
        return host_ip, flows
    if k > pool_count:
        raise BadInput(f"{flows:,} flows need {k} public addresses; the NAT pool has {pool_count} "
                       f"({pool_count * per:,} flows at most)")
    net = ipaddress.IPv4Network(inside)
    first = int(ipaddress.IPv4Address(host_ip))
    last = int(net.broadcast_address) - 1
    for a in range(first, last - k + 2):
        if len({pool_hash(a + i) % pool_count for i in range(k)}) == k:
            return str(ipaddress.IPv4Address(a)), math.ceil(flows / k)
    raise BadInput(f"no {k} consecutive inside addresses leave by different public addresses")


def traffic_rig(name: str, flows: int):
    """nfx.traffic.rig.rig, with the source addresses planned by `addressing`."""
    src, _ = gen_and_sink_hosts(registry.load(name))
    cfg = builder.instance(name, "nf0").config()
    first, fpa = addressing(flows, src["addr"].split("/")[0], str(ipaddress.IPv4Interface(src["addr"]).network),
                            cfg.pool_count, cfg.port_hi - cfg.port_lo + 1)
    return rig(name, flows, src_ip=first, flows_per_addr=fpa)


class Bed:
    """The bench's testbed: its two instances, where the state is, the moves through its controller."""

    def __init__(self, name: str, progress):
        self.name, self.progress = name, progress
        self.nf = {i: builder.instance(name, i) for i in ("nf0", "nf1")}

    def held(self, inst: str) -> int:
        """Connections (nat_fwd entries) an instance holds."""
        return len(self.nf[inst].maps["nat_fwd"])

    def drops(self, before: dict | None = None) -> dict:
        """Drop counters of both instances (deltas from `before` if given)."""
        now = {i: {k: v for k, v in nf.stats().items() if k in DROP_STATS} for i, nf in self.nf.items()}
        if before is None:
            return now
        return {i: {k: v - before[i].get(k, 0) for k, v in now[i].items() if v - before[i].get(k, 0)} for i in now}

    def move(self, src, dst, guarantee, mechanism, opts, delay_ms, timeout=30.0, rate_mbit: float = 0.0,
             data=(0.0, 0.0)) -> dict:
        return controller.call(self.name, "POST", "/move",
                               {"src": src, "dst": dst, "filter": "all", "scopes": "all", "guarantee": guarantee,
                                "opts": "" if opts == "none" else opts, "mechanism": mechanism,
                                "timeout": timeout, "ctrl_delay_ms": delay_ms, "ctrl_rate_mbit": rate_mbit,
                                "data_delay_ms": data[0], "data_rate_mbit": data[1]},
                               timeout=timeout * 4 + 60)

    def clear(self) -> None:
        for i in ("nf0", "nf1"):
            with AgentClient(self.name, i, timeout=120) as c:
                c.delete()

    def touch(self, gen, sink, flows: int) -> dict:
        """One packet per flow, through wherever the switches send it (nf0 between cells)."""
        rate = min(WARM_PPS, max(flows * 10, 1000))
        return measure(gen, sink, rate, (flows + 0.5) / rate, settle_s=0.5)

    def establish(self, gen, sink, flows: int, tries: int = 6) -> None:
        """Every flow has its state on nf0 and nf1 has none (after a clear)."""
        for i in range(tries):
            r = self.touch(gen, sink, flows)
            n0, n1 = self.held("nf0"), self.held("nf1")
            self.progress(f"  warm-up pass {i + 1}: nf0 holds {n0:,}/{flows:,} connections "
                          f"(sink lost {r['lost']:,})")
            if n0 == flows and n1 == 0:
                return
        raise NfxError(f"could not establish {flows:,} flows on nf0 (nf0 {n0:,}, nf1 {n1:,})")

    def home(self, gen, sink, flows: int) -> None:
        """Back to the starting situation: all state on nf0, none on nf1, steered to nf0."""
        n0, n1 = self.held("nf0"), self.held("nf1")
        if n1 == 0 and n0 == flows:
            return
        try:
            # also points the switches back at nf0, whatever state nf1 has
            self.move("nf1", "nf0", "ng", "dist", "none", 0.0)
        except NfxError as e:
            self.progress(f"  moving back to nf0 failed: {e}")
        n0, n1 = self.held("nf0"), self.held("nf1")
        if n1 == 0 and n0 == flows:
            return
        self.progress(f"  state not where it should be (nf0 {n0:,}, nf1 {n1:,}): clearing and warming up again")
        self.clear()
        self.establish(gen, sink, flows)


@contextmanager
def testbed(max_flow_count: int, progress, nf: str = "nat", mgmt: str | None = None):
    """A fresh sharp testbed with two `nf` instances whose tables hold max_flow_count flows (and
    management network `mgmt`, default the topology's); yields (name, max_flows) and takes it down."""
    name = "bm" + secrets.token_hex(3)
    max_flows = max(65536, 1 << (int(max_flow_count * 2.2)).bit_length())
    progress(f"testbed {name}: sharp, 2 {nf.upper()} instances, max_flows {max_flows:,}")
    topo = topology.load("sharp", 2, mgmt=mgmt)
    wide = None
    if nf == "nat":
        # a NAT's whole port range, halved between the two, and 8 public addresses: 100k flows
        # need 5 of them (the testbed's default range leaves room for added instances: 60k flows)
        topo.pool = POOL
        wide = ["port_lo=1024", "port_hi=65535"]
    builder.up(name, topo, nf, max_flows, progress=lambda m: progress(f"  {m}"), nf_settings=wide)
    try:
        yield name, max_flows
    finally:
        if registry.path(name).exists():
            progress(f"testbed {name} down")
            builder.down(name)
