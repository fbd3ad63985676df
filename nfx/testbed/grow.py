"""nfx nf add: a new NF instance in a running testbed, made like its others (nfx/testbed/slots.py
says where it goes): its netns; a veth to each switch, to each other instance (the peer links
redirects travel) and to the management bridge; its program (the testbed's NF kind and build)
attached and pinned; the switches' new ports (program, stub, role); every other instance's tx
devmap slot toward it; its agent; and the controller told. Every item is on the record before
it is made, and an add that fails anywhere is undone by nfx/testbed/shrink.py's teardown, so
nothing is left behind (`testbed down` also finds all of it).

The NAT's public port slice: the running instances keep theirs (a mapping in flight never
meets a port of the new one); the new instance takes a run of ports no instance allocates
from and none holds a mapping in (slots.free_slice): the ports outside the build's range
(NatConfig's 20000-59999 leaves 1024-19999 and 60000-65535), or a removed instance's slice
once no instance holds a mapping in it any more.

The program's load (most of it the kernel's verifier: 0.5 s for the NAT here) runs in a thread
from the start, while the namespace, links and switch ports are made."""
import logging
import socket
from pathlib import Path

from .. import registry
from ..control import switch_ports
from ..control.switch import Switch
from ..errors import BadInput, NfxError
from ..loader import attach, netlink, netns
from ..loader.parallel import Preloads
from ..loader.precompile import Precompiled
from ..nfs import nf_class, open_node
from ..nfs.base import Wiring
from ..procs import agents as agent_procs, controller
from . import slots
from .builder import RELEASE_IF, RELEASE_PEER, STAMP_MTU, nf_config
from .shrink import one_change, teardown
from .steps import StepClock, timed_record

log = logging.getLogger("nfx.testbed")


def add(name: str, instance: str | None = None, progress=None) -> dict:
    """Add an instance (named `instance`, else the next free nfN) and report where it went and
    each step's time (timings_ms; program_load_ms is the background load's own time)."""
    with one_change(name):
        return _add(name, instance, progress)


def _add(name: str, instance: str | None, progress) -> dict:
    progress = progress or (lambda msg: None)
    clock = StepClock()
    rec = timed_record(registry.load(name), clock)
    with clock.step("plan"):
        p = slots.plan(rec, instance)
        tmpl = rec["nodes"][p.template]
        kind = tmpl["kind"]
        switches = _open_switches(rec, p.switches)
    try:
        with clock.step("plan"):
            for s in switches.values():
                switch_ports.check_room(s)
            config, ports = _config(rec, kind, p)
        defines = (tmpl.get("build") or {}).get("defines")
        build = nf_class(kind).build_defines(rec["max_flows"], defines)
        progress(f"{p.name}: index {p.index}, tx slot {p.slot}" + (f", NAT ports {ports[0]}-{ports[1]}" if ports else ""))
        try:
            with Precompiled([(kind, build)]), Preloads(kind, build, f"nfx_{kind}", "xdp", 1) as programs:
                _make(rec, p, kind, config, ports, defines, programs, switches, clock, progress)
                load_s = list(programs.load_s)
            # in service: moves may name it from the controller's next read of the record
            rec["nodes"][p.name].pop("changing", None)
            rec.save()
            with clock.step("controller"):
                told = controller.tell_instances(name)
        except BaseException:
            progress(f"{p.name}: failed, undoing what was made")
            _undo(rec, p.name, clock)
            raise
    finally:
        for s in switches.values():
            s.close()
    node = rec["nodes"][p.name]
    return {"testbed": name, "instance": p.name, "kind": kind, "index": p.index, "tx_slot": p.slot,
            "netns": p.ns, "like": p.template, "switch_ports": {sw: p.name for sw in p.switches},
            "peers": sorted(p.peers), "nat_ports": list(ports) if ports else None,
            "agent": {k: node["agent"].get(k) for k in ("pid", "addr", "port", "log")},
            "controller_told": told, "timings_ms": clock.ms(),
            "program_load_ms": round(load_s[0] * 1e3, 1) if load_s else None}


def _undo(rec, instance: str, clock: StepClock) -> None:
    """What a failed add made, taken back; a failure of that is logged, so the add's own error
    is the one the caller sees."""
    with clock.step("undo"):
        try:
            teardown(rec, instance)
        except Exception as e:          # noqa: BLE001
            log.error("undoing the add of %s failed too: %s (nfx nf remove --force --instance %s, or testbed "
                      "down, takes the rest)", instance, e, instance)
        controller.tell_instances(rec["name"], quiet=True)


def _open_switches(rec, names: list[str]) -> dict[str, Switch]:
    out = {}
    try:
        for sw in names:
            n = rec["nodes"][sw]
            out[sw] = Switch.open(sw, n["ns"], Path(n["pin"]))
    except BaseException:
        for s in out.values():
            s.close()
        raise
    return out


def _config(rec, kind: str, p: slots.Plan):
    """The new instance's config and, for a NAT, its port slice: the template's config (the
    testbed's settings) with a free slice (module doc)."""
    if kind != "nat":
        return nf_config(kind, None, rec.get("nf_settings")), None
    configs = {}
    for n in p.peers:
        nf = open_node(rec.nf(n))
        try:
            configs[n] = nf.config()
        finally:
            nf.maps.close()
    mine = configs[p.template]
    taken = [(c.port_lo, c.port_hi) for c in configs.values()] + held_retired(rec)
    got = slots.free_slice(taken, mine.port_hi - mine.port_lo + 1)
    if got is None:
        raise BadInput(f"no free NAT port slice for {p.name}: the instances' slices and the ports they still hold "
                       f"({', '.join(f'{lo}-{hi}' for lo, hi in sorted(taken))}) leave no run of "
                       f"{slots.MIN_SLICE} ports in {slots.PORT_FLOOR}-{slots.PORT_CEIL}",
                       hint="build the testbed with a narrower range (--nf-set port_lo=... --nf-set port_hi=...), "
                            "or remove an instance")
    cfg = type(mine).from_buffer_copy(mine)
    cfg.port_lo, cfg.port_hi = got
    return cfg, got


def held_retired(rec) -> list[tuple[int, int]]:
    """Removed instances' slices that some instance still holds a mapping in (moved there);
    the others are free again and leave the record."""
    retired = [tuple(r) for r in rec.get("nat_retired", [])]
    if not retired:
        return []
    used: set[int] = set()
    for n in slots.instances(rec):
        nf = open_node(rec.nf(n))
        try:
            cnt, keys, _ = nf.maps.nat_ports.export()
            used.update(socket.ntohs(keys[i].port) for i in range(cnt))
        finally:
            nf.maps.close()
    held = [r for r in retired if any(r[0] <= port <= r[1] for port in used)]
    rec["nat_retired"] = [list(r) for r in held]
    return held


def _make(rec, p: slots.Plan, kind: str, config, ports, defines, programs: Preloads, switches: dict,
          clock: StepClock, progress) -> None:
    # on the record before anything exists: teardown (and testbed down) find what was made
    # "changing": no move names it until it is in service (the controller leaves it out)
    rec["nodes"][p.name] = {"role": "nf", "ns": p.ns, "ifaces": {sw: sw for sw in p.switches}, "kind": kind,
                            "index": p.index, "added": True, "changing": "add",
                            **({"nat_ports": list(ports)} if ports else {})}
    rec["mgmt"]["agents"][p.name] = p.agent_addr
    rec.register("netns", p.ns)
    with clock.step("agent_spawn"):
        agent = agent_procs.Held(rec, p.name)      # its imports beside the build and the program's load
    try:
        _build(rec, p, kind, config, defines, programs, switches, clock, progress, agent)
    finally:
        agent.close()


def _build(rec, p: slots.Plan, kind: str, config, defines, programs: Preloads, switches: dict,
           clock: StepClock, progress, agent: agent_procs.Held) -> None:
    tb, nodes, mg = rec["name"], rec["nodes"], rec["mgmt"]
    queues = int(rec.get("queues") or 1)
    progress(f"{p.name}: namespace and links")
    with clock.step("netns_links"):
        netns.add(p.ns)
        with netlink.Sockets() as nls:
            here = nls[p.ns]
            for sw in p.switches:
                there = nls[nodes[sw]["ns"]]
                here.veth(sw, p.name, there, queues=queues)
                here.mtu(sw, STAMP_MTU)
                there.mtu(p.name, STAMP_MTU)
            here.veth(RELEASE_IF, RELEASE_PEER)
            for other, idx in p.peers.items():
                there = nls[nodes[other]["ns"]]
                here.veth(f"p{idx}", f"p{p.index}", there, queues=queues)
                here.mtu(f"p{idx}", STAMP_MTU)
                there.mtu(f"p{p.index}", STAMP_MTU)
            mgl = nls[mg["ns"]]
            here.veth("mg", p.name, mgl, up=False)
            here.set_mac("mg", slots.mgmt_mac(p.agent_addr))
            mgl.master(p.name, mg["bridge"])
            here.addr("mg", f"{p.agent_addr}/{mg['net'].split('/')[1]}")
            here.up("mg")
            # an instance of this address removed a moment ago can leave a FAILED entry: the
            # new agent's first caller got "No route to host" (the loop's add, retried later)
            mgl.neigh_forget(p.agent_addr, mg["bridge"])

    progress(f"{p.name}: switch ports")
    with clock.step("switch"):
        for sw, s in switches.items():
            nodes[sw]["ifaces"][p.name] = p.name
            nodes[sw].setdefault("ports", []).append(p.name)
            rec.save()
            switch_ports.add_port(s, p.name, "nf", rec.get("stub"))
            if queues > 1:
                netns.xps_by_cpu(nodes[sw]["ns"], p.name, queues)

    progress(f"{p.name}: {kind} program")
    with clock.step("program_load"):           # what is left of it: it began with the add
        program = programs.take()
    with clock.step("attach_pin"):
        pin_dir = registry.pin_root(tb) / p.name
        wiring = Wiring(p.ns, tuple(p.switches), tuple(_host_mac_behind(rec, sw) for sw in p.switches),
                        release=RELEASE_IF, peers={slots.peer_slot(idx): f"p{idx}" for idx in p.peers.values()})
        rec.register("nf", p.name)
        nf = nf_class(kind).create(p.name, wiring, pin_dir, config, max_flows=rec["max_flows"], defines=defines,
                                   program=program)
        try:
            nodes[p.name].update(pin=str(pin_dir), wiring=list(p.switches), release_if=RELEASE_IF,
                                 peer_slots={o: slots.peer_slot(i) for o, i in p.peers.items()})
            if defines:
                nodes[p.name]["build"] = {"defines": dict(defines)}
            rec.save()
        finally:
            nf.bpf.cleanup()        # the pins and the attachments hold it now

    progress(f"{p.name}: peer links of {', '.join(p.peers) or 'no other instance'}")
    with clock.step("peers"):
        for other in p.peers:
            _join_peer(rec, other, p)

    progress(f"{p.name}: agent")
    with clock.step("agent_ready"):
        agent.go()
    rec["instances"] = len(slots.instances(rec))
    rec.save()


def _join_peer(rec, other: str, p: slots.Plan) -> None:
    """Instance `other` redirects to the new one: its program on its end of their peer link
    (frames from the new one arrive there), then its tx slot toward it."""
    o = rec["nodes"][other]
    o.setdefault("peer_slots", {})[p.name] = p.slot
    rec.save()
    ifname = f"p{p.index}"
    attach.attach_xdp_pinned(o["ns"], ifname, str(Path(o["pin"]) / "prog"))
    nf = open_node(rec.nf(other))
    try:
        nf.add_peer(p.slot, ifname, o["ns"])
    finally:
        nf.maps.close()


def _host_mac_behind(rec, sw: str) -> bytes:
    """The next hop's MAC toward switch `sw`: the host on its other side."""
    for peer in rec["nodes"][sw].get("ifaces", {}):
        n = rec["nodes"].get(peer, {})
        if n.get("role") == "host" and n.get("mac"):
            return bytes.fromhex(n["mac"].replace(":", ""))
    raise NfxError(f"switch {sw} of testbed {rec['name']} has no host behind it")
