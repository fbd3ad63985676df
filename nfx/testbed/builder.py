"""Make a topology real: namespaces, veths, host addressing, switches, NF instances, and the
management bridge; and take it all down again. Names are <testbed>-<node>, so testbeds with
different names live side by side."""
import dataclasses
import ipaddress
import logging
import secrets
import time
from pathlib import Path

from .. import layout as L, registry
from ..control.spread import Spread
from ..control.switch import Match, Rule, Switch
from ..errors import BadInput, NfxError
from ..etcd import LocalEtcd
from ..loader import attach, netlink, netns, pin
from ..loader.compile import compile_source, load as load_prog
from ..loader.parallel import Preloads
from ..loader.precompile import Precompiled
from ..nfs import nf_class, open_node
from ..nfs.base import Wiring, apply_settings
from ..nfs.ids import IdsConfig
from ..nfs.nat import NatConfig, parse_pool
from ..paths import decision_log
from ..procs import agents as agent_procs, controller
from . import join
from .slots import agent_addr, mgmt_mac, peer_slot
from .topology import Topology

log = logging.getLogger("nfx.testbed")

# Hosts send to these MACs; switches forward on rules, NFs do not check the destination MAC.
VGW_IN = "02:00:00:00:01:01"
VGW_OUT = "02:00:00:00:02:01"
HOST_IF = "eth0"
GEN_IF, GEN_PEER = "gen0", "gen1"      # veth pair inside h1 that the generator stays attached to


def ns_name(tb: str, node: str) -> str:
    return f"{tb}-{node}"


def ifname(topo: Topology, node: str, peer: str) -> str:
    """A node's interface toward `peer`: hosts have eth0, everything else names the peer."""
    return HOST_IF if topo.nodes[node]["role"] == "host" else peer


def nf_config(kind: str, topo: Topology, settings: list[str] | None = None):
    """The config every instance starts with; `settings` ("name=value", the CLI's --nf-set)
    change fields of it, e.g. host_quota=64 (NAT) or drop_uninspected=true (IDS)."""
    if kind == "nat":
        return apply_settings(NatConfig(inside=topo.inside, pool=topo.pool), settings)
    if kind == "ids":
        return apply_settings(IdsConfig(), settings)
    return None


def instance_config(config, index: int, count: int):
    """Instance `index` of `count`'s config: a NAT's own slice of the port range, so the public
    ports of two instances never collide and moving flows onto one that runs others merges
    their mappings as they are."""
    if not isinstance(config, NatConfig) or count < 2:
        return config
    span = config.port_hi - config.port_lo + 1
    if span < count:
        raise BadInput(f"the NAT's port range {config.port_lo}-{config.port_hi} cannot give {count} instances a port each")
    lo = config.port_lo + index * span // count
    hi = config.port_lo + (index + 1) * span // count - 1
    return dataclasses.replace(config, port_lo=lo, port_hi=hi)


def nf_defines(statelet_ring_kib: int | None, hold_slots: int | None = None) -> dict:
    """The NF programs' build settings: the statelet ring's size (a power of two, 4 KiB pages)
    and the slots of the gate's hold FIFO (a power of two: its positions wrap at 2^32)."""
    out = {}
    if statelet_ring_kib is not None:
        kib = statelet_ring_kib
        if kib < 4 or kib & (kib - 1) or kib > (1 << 20):
            raise BadInput(f"the statelet ring is a power of two from 4 KiB to 1 GiB, not {kib} KiB")
        out["NFX_STATELET_RING_PAGES"] = kib // 4
    if hold_slots is not None:
        if hold_slots < 16 or hold_slots & (hold_slots - 1) or hold_slots > L.HOLD_SLOTS_MAX:
            raise BadInput(f"the hold FIFO has a power of two of slots from 16 to 65536, not {hold_slots}")
        out["NFX_HOLD_SLOTS"] = hold_slots
    return out


def up(name: str, topo: Topology, kind: str = "nat", max_flows: int = 262144, progress=None,
       agents: bool = True, ctrl_delay_ms: float = 0.0, nf_settings: list[str] | None = None,
       statelet_ring_kib: int | None = None, hold_slots: int | None = None) -> registry.Testbed:
    """Build the testbed; with `agents`, start one agent per NF instance once everything exists,
    and the controller (its control messages delayed by ctrl_delay_ms, one way)."""
    progress = progress or (lambda msg: None)
    config = nf_config(kind, topo, nf_settings)      # bad settings fail before anything exists
    instance_config(config, 0, len(topo.role("nf")))
    defines = nf_defines(statelet_ring_kib, hold_slots)
    pin.ensure_bpffs()
    # every agent request carries this token; the registry file is root-only (0600)
    rec = registry.new(name, topology=topo.name, topology_file=topo.source, nf=kind, instances=topo.instances,
                       max_flows=max_flows, pin_root=str(registry.pin_root(name)), started=time.time(),
                       token=secrets.token_hex(16), clusters={c: list(m) for c, m in topo.clusters.items()},
                       pairs=dict(topo.pairs), spares=list(topo.spares),
                       spread=topo.spread, queues=topo.queues)
    try:
        rec["nf_settings"] = list(nf_settings or [])
        _build(rec, topo, kind, max_flows, progress, config, defines)
        if agents and topo.role("nf"):
            progress(f"agents for {', '.join(topo.role('nf'))}")
            agent_procs.start(rec, topo.role("nf"))
            if topo.role("switch"):
                progress("controller")
                controller.start(name, ctrl_delay_ms, rec)
    except BaseException:
        down(name)
        raise
    rec["status"] = "up"
    rec.save()
    return rec


def _build(rec: registry.Testbed, topo: Topology, kind: str, max_flows: int, progress, config=None,
           defines: dict | None = None) -> None:
    # the stub, the switch and the NF compile in children while the namespaces and links are
    # made (a compile costs 1.1-1.7 s of one CPU), unless an earlier process left them on disk
    # (loader/imagecache.py); the steps below load copies of them
    cls, nfs = nf_class(kind), topo.role("nf")
    nf_build = cls.build_defines(max_flows, defines)
    jobs = [("stub", None)] + [("switch", None)] * bool(topo.role("switch")) + [(kind, nf_build)] * bool(nfs)
    # and the instances' copies are verified in threads as soon as the NF's compile is in (the
    # verifier is most of an instance's cost), while this thread makes everything else
    with Precompiled(jobs), Preloads(kind, nf_build, f"nfx_{kind}", "xdp", len(nfs)) as programs:
        _build_all(rec, topo, kind, max_flows, progress, config, defines, programs)


def _build_all(rec: registry.Testbed, topo: Topology, kind: str, max_flows: int, progress, config=None,
               defines: dict | None = None, programs: Preloads | None = None) -> None:
    tb = rec["name"]
    progress(f"namespaces for {len(topo.nodes)} nodes")
    for node in topo.nodes:
        ns = ns_name(tb, node)
        rec.register("netns", ns)
        netns.add(ns)
    rec["nodes"] = {n: {"role": s["role"], "ns": ns_name(tb, n),
                        "ifaces": {p: ifname(topo, n, p) for p in topo.neighbours(n)}} for n, s in topo.nodes.items()}
    rec.save()

    # one netlink socket per namespace for the whole build
    with netlink.Sockets() as nls:
        progress(f"{len(topo.links)} links")
        for a, b in topo.links:
            nls[ns_name(tb, a)].veth(ifname(topo, a, b), ifname(topo, b, a), nls[ns_name(tb, b)], queues=topo.queues)
            if {topo.nodes[a]["role"], topo.nodes[b]["role"]} == {"switch", "nf"}:
                _stamp_room(nls[ns_name(tb, a)], ifname(topo, a, b), nls[ns_name(tb, b)], ifname(topo, b, a))

        progress("hosts")
        stub = _stub_program(rec)
        for h in topo.role("host"):
            _host(rec, topo, h, stub, nls[ns_name(tb, h)])

        for sw in topo.role("switch"):
            progress(f"switch {sw}")
            _switch(rec, topo, sw, stub, config)

        progress("peer links and release ports")
        peers = _move_links(rec, topo, nls)
        cls = nf_class(kind)
        nfs = topo.role("nf")
        for i, nf in enumerate(nfs):
            progress(f"NF {nf} ({kind})")
            inside, outside = topo.neighbours(nf)
            w = Wiring(ns_name(tb, nf), (ifname(topo, nf, inside), ifname(topo, nf, outside)),
                       (_mac_toward(rec, topo, nf, inside), _mac_toward(rec, topo, nf, outside)),
                       release=RELEASE_IF, peers=peers[nf])
            pin_dir = registry.pin_root(tb) / nf
            rec.register("nf", nf)
            cls.create(nf, w, pin_dir, instance_config(config, i, len(nfs)), max_flows=max_flows, defines=defines,
                       program=programs.take() if programs else None)
            if defines:
                rec["nodes"][nf]["build"] = {"defines": dict(defines)}    # an upgrade builds with them too
            rec["nodes"][nf].update(kind=kind, pin=str(pin_dir), wiring=[w.ifname[0], w.ifname[1]],
                                    index=i, release_if=RELEASE_IF,
                                    peer_slots={other: slot for slot, other in _slot_owner(peers[nf], topo).items()})
            rec.save()

        progress("management bridge")
        _mgmt(rec, topo, nls)


RELEASE_IF, RELEASE_PEER = "rl0", "rl1"
STAMP_MTU = L.STAMP_MTU       # switch to NF, NF to NF


def _stamp_room(nl_a, if_a: str, nl_b, if_b: str) -> None:
    nl_a.mtu(if_a, STAMP_MTU)
    nl_b.mtu(if_b, STAMP_MTU)


def _move_links(rec, topo: Topology, nls: netlink.Sockets) -> dict[str, dict[int, str]]:
    """A veth between every two instances (redirects travel over the data plane) and, inside
    each instance, a spare veth the release path's live test runs name as their ingress."""
    nfs = topo.role("nf")
    peers: dict[str, dict[int, str]] = {nf: {} for nf in nfs}
    for i, a in enumerate(nfs):
        nl = nls[ns_name(rec["name"], a)]
        nl.veth(RELEASE_IF, RELEASE_PEER)
        for j, b in enumerate(nfs[i + 1:], start=i + 1):
            nl.veth(f"p{j}", f"p{i}", nls[ns_name(rec["name"], b)], queues=topo.queues)
            _stamp_room(nl, f"p{j}", nls[ns_name(rec["name"], b)], f"p{i}")
            peers[a][peer_slot(j)] = f"p{j}"
            peers[b][peer_slot(i)] = f"p{i}"
    return peers


def _slot_owner(slots: dict[int, str], topo: Topology) -> dict[int, str]:
    nfs = topo.role("nf")
    return {slot: nfs[slot - 2] for slot in slots}


def _stub_program(rec):
    """One XDP_PASS program, pinned, for every interface that receives redirected frames."""
    b = compile_source("stub")
    fn = load_prog(b, "nfx_stub", "xdp")
    path = registry.pin_root(rec["name"]) / "stub"
    rec.register("pin", str(path))
    pin.pin_prog(fn.fd, path)
    rec["stub"] = str(path)
    rec.save()
    return fn


def host_mac(addr: str) -> str:
    """A host's MAC, made of its address: the same in every testbed of a topology, so an NF lent
    to a joined testbed (nfx testbed join) addresses the borrower's hosts right."""
    return "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Interface(addr).ip.packed)


def _host(rec, topo: Topology, h: str, stub, nl: netlink.Netlink) -> None:
    spec = topo.nodes[h]
    ns = ns_name(rec["name"], h)
    nl.set_mac(HOST_IF, host_mac(spec["addr"]))
    nl.addr(HOST_IF, spec["addr"])
    # checksums complete in software and no GSO super-frames: XDP NFs see real wire packets
    netns.run(["ethtool", "-K", HOST_IF, "tx", "off", "tso", "off", "gso", "off", "gro", "off"], ns=ns)
    net = ipaddress.IPv4Interface(spec["addr"]).network
    if "gateway" in spec:
        nl.neigh(spec["gateway"], VGW_IN, HOST_IF)
        nl.route("default", spec["gateway"])
    else:
        # the outside host reaches the NAT pool on its own subnet: pin those addresses to the NF side
        base, count = parse_pool(topo.pool)
        for a in range(base, base + count):
            addr = ipaddress.IPv4Address(a)
            if addr in net:
                nl.neigh(str(addr), VGW_OUT, HOST_IF)
        nl.route(topo.inside, str(ipaddress.IPv4Address(base)))
    attach.attach_xdp(ns, HOST_IF, stub)
    info = {"addr": spec["addr"], "mac": netns.mac(HOST_IF, ns).hex(":"), "ifname": HOST_IF}
    if "gateway" in spec:
        nl.veth(GEN_IF, GEN_PEER)
        info["gen_if"] = GEN_IF
    rec["nodes"][h].update(info)
    rec.save()


def _switch(rec, topo: Topology, sw: str, stub, config=None) -> None:
    ns = ns_name(rec["name"], sw)
    ports = [ifname(topo, sw, p) for p in topo.neighbours(sw)]
    pin_dir = registry.pin_root(rec["name"]) / sw
    rec.register("switch", sw)
    s = Switch.create(sw, ns, ports, pin_dir, stub=stub)
    for p in ports if topo.queues > 1 else ():
        netns.xps_by_cpu(ns, p, topo.queues)       # a flow keeps its CPU's queue past the switch
    hosts = [p for p in topo.neighbours(sw) if topo.nodes[p]["role"] == "host"]
    nfs = [p for p in topo.neighbours(sw) if topo.nodes[p]["role"] == "nf"]
    # roles: a host-facing port drops nfx's reserved marks, an NF-facing one takes triggers
    for p in topo.neighbours(sw):
        s.set_port_role(ifname(topo, sw, p), "host" if topo.nodes[p]["role"] == "host" else "nf")
    # default plan: everything from the host goes to the first instance (or, with spread, each
    # flow to one instance: _spread), everything from an instance goes to the host; moves
    # install more specific rules above these
    for h in hosts:
        if nfs:
            s.add_wild(Match(in_port=h), _spread(topo, sw, h, config) if topo.spread else Rule(output=[nfs[0]]),
                       prio=1000)
        s.add_wild(Match(), Rule(output=[h]), prio=2000)
    rec["nodes"][sw].update(pin=str(pin_dir), ports=ports)
    rec.save()


def _spread(topo: Topology, sw: str, host: str, config) -> Rule:
    """A host's traffic spread over every instance, listed by instance index at every switch so
    both directions of a flow pick the same one: from the inside host by the flow's symmetric
    hash; from the outside host, a NAT's return traffic by the public port's slice of the range
    (each instance's own, instance_config), anything else (an IDS's) by the same hash."""
    by = Spread()
    if "gateway" not in topo.nodes[host] and isinstance(config, NatConfig):
        by = Spread("slice", config.port_lo, config.port_hi)
    return Rule(spread=[ifname(topo, sw, nf) for nf in topo.role("nf")], spread_by=by)


def _mac_toward(rec, topo: Topology, nf: str, neighbour: str) -> bytes:
    """The next hop's MAC on one side of an NF: the host behind the switch, or the host itself."""
    seen, frontier = {nf}, [neighbour]
    while frontier:
        n = frontier.pop(0)
        if topo.nodes[n]["role"] == "host":
            return bytes.fromhex(rec["nodes"][n]["mac"].replace(":", ""))
        seen.add(n)
        frontier += [p for p in topo.neighbours(n) if p not in seen and topo.nodes[p]["role"] != "nf"]
    raise NfxError(f"no host reachable from {nf} via {neighbour}")


def _mgmt(rec, topo: Topology, nls: netlink.Sockets) -> None:
    tb = rec["name"]
    ns = ns_name(tb, "mg")
    rec.register("netns", ns)
    netns.add(ns)
    net = ipaddress.IPv4Network(topo.mgmt)
    hosts = list(net.hosts())
    mgl = nls[ns]
    mgl.bridge("br0")
    mgl.addr("br0", f"{hosts[-1]}/{net.prefixlen}")
    mgl.up("br0")
    mg = {"ns": ns, "bridge": "br0", "controller": str(hosts[-1]), "agents": {}, "net": str(net)}
    for i, nf in enumerate(topo.role("nf")):
        nfl = nls[ns_name(tb, nf)]
        nfl.veth("mg", nf, mgl, up=False)
        mgl.master(nf, "br0")
        mg["agents"][nf] = agent_addr(str(net), i)
        nfl.set_mac("mg", mgmt_mac(mg["agents"][nf]))
        nfl.addr("mg", f"{mg['agents'][nf]}/{net.prefixlen}")
        nfl.up("mg")
    rec["mgmt"] = mg
    rec.save()


def down(name: str) -> dict:
    """Remove everything the registry lists, newest first; missing pieces are fine."""
    rec = registry.load(name)
    created = rec.get("created", {})
    removed = {"netns": 0, "pins": 0, "agents": 0}
    if rec.get("join"):
        # the other testbed's end of the routed link and its routes to this one go too
        removed["unjoined"] = join.unjoin(name, force=True)["peer"]
    # the controller and the agents first: they hold the maps open and listen in the namespaces about to go
    removed["controller"] = controller.stop(name, rec)
    removed["agents"] = agent_procs.stop_all(name, rec)
    # the etcd `nfx cluster up` started for this testbed, if any (one given by URL is the user's)
    local_etcd = (rec.get("cluster") or {}).get("local_etcd")
    if local_etcd:
        removed["etcd"] = LocalEtcd.stop_detached(local_etcd)
    controller.remove_logs(name)
    decision_log(name).unlink(missing_ok=True)      # `nfx orchestrate run`'s, if one ran
    for nf in created.get("nf", []):
        pin.unpin(registry.pin_root(name) / nf)
        removed["pins"] += 1
    for sw in created.get("switch", []):
        pin.unpin(registry.pin_root(name) / sw)
        removed["pins"] += 1
    for p in created.get("pin", []):
        Path(p).unlink(missing_ok=True)
        removed["pins"] += 1
    # deleting a namespace takes its veths (and their XDP/tc programs) with it
    for ns in reversed(created.get("netns", [])):
        if netns.exists(ns):
            netns.delete(ns)
            removed["netns"] += 1
    pin.unpin(registry.pin_root(name))
    registry.remove(name)
    return removed


def status(name: str) -> dict:
    rec = registry.load(name)
    out = {"name": name, "status": rec.get("status"), "topology": rec.get("topology"), "nf": rec.get("nf"),
           "instances": rec.get("instances"), "clusters": rec.get("clusters", {}), "spread": rec.get("spread", False),
           "queues": rec.get("queues", 1), "nodes": {}}
    for node, info in rec.get("nodes", {}).items():
        n = {"role": info["role"], "netns": info["ns"], "alive": netns.exists(info["ns"])}
        if info["role"] == "nf" and "pin" in info:
            n["agent"] = agent_procs.status(rec, node)
            try:
                n["stats"] = open_node(rec.nf(node)).stats()
            except NfxError as e:
                n["error"] = str(e)
        if info["role"] == "host":
            n["addr"] = info.get("addr")
        out["nodes"][node] = n
    return out


def instance(name: str, inst: str):
    """Open a running NF instance of a testbed by node name (nf0, nf1, ...)."""
    return open_node(registry.load(name).nf(inst))
