"""nfx nf remove: an NF instance out of a running testbed, and the teardown an add that failed
half way runs too. A remove is refused while the instance holds anything that matters: a
switch rule that sends to it, per-flow state, a gate mark or filter (a move's); --force takes
it out anyway (its flows are lost, and rules that sent to it are reported). Before the check
the instance is marked "changing" and the controller told, so no move names it from then on
and a move under way ends first; a refusal takes the mark back.

The teardown stops its agent, takes every other instance's tx slot toward it back, the
switches' ports (role, program, stub), deletes its namespace (its veths, to the switches, the
other instances and the management bridge, go with it: the call returns once they are gone)
and its pins, and takes it off the record. A NAT's slice is kept as retired: it is free for a
later add once no instance holds a mapping in it (flows moved off it keep their ports)."""
import logging
import time
from pathlib import Path

from .. import registry
from ..control import switch_ports
from ..control.switch import Switch
from ..errors import BadInput, NfxError, NotFound, Timeout
from ..gate import Gate
from ..loader import netlink, netns, pin
from ..nfs import open_node
from ..procs import agents as agent_procs, controller
from ..state.tables import tables
from . import slots
from .steps import StepClock, timed_record

log = logging.getLogger("nfx.testbed")
GONE_WAIT_S = 10.0          # a deleted namespace's veths leave the others' namespaces by then


def one_change(name: str):
    """One nfx nf add|remove at a time on a testbed: two would pick the same index, slot and
    ports. A lock on the testbed's pin directory."""
    registry.load(name)                      # NotFound for a testbed that is not there
    if not registry.pin_root(name).is_dir():
        raise NotFound(f"testbed {name} has no pins (still building, or half taken down)")
    return pin.locked(registry.pin_root(name), BadInput(f"another nfx nf add or remove is running on testbed {name}"))


def remove(name: str, instance: str, force: bool = False, progress=None) -> dict:
    with one_change(name):
        return _remove(name, instance, force, progress)


def _remove(name: str, instance: str, force: bool, progress) -> dict:
    progress = progress or (lambda msg: None)
    clock = StepClock()
    rec = timed_record(registry.load(name), clock)
    with clock.step("plan"):
        slots.check_removable(rec, instance)
    node = rec["nodes"][instance]
    was = node.get("changing")              # "add": an add that died half way, taken out now
    node["changing"] = "remove"
    rec.save()
    try:
        with clock.step("controller"):
            controller.tell_instances(name)
        with clock.step("check"):
            held = holdings(rec, instance)
        if held and not force:
            raise BadInput(f"{instance} is not empty: {describe(held)}",
                           hint=f"move its flows away first (nfx move --name {name} --from {instance} --to ...), "
                                "or --force (its flows are lost)")
    except BaseException:
        node.pop("changing", None)
        if was:
            node["changing"] = was
        rec.save()
        controller.tell_instances(name, quiet=True)
        raise
    progress(f"{instance}: " + (f"forced, it held {describe(held)}" if held else "empty") + "; taking it down")
    gone = teardown(rec, instance, clock)
    with clock.step("controller"):
        told = controller.tell_instances(name)
    return {"testbed": name, "instance": instance, "forced": bool(held), "held": held, **gone,
            "controller_told": told, "timings_ms": clock.ms()}


def holdings(rec, instance: str) -> dict:
    """What the instance still owns: rules that send to it, per-flow entries by table, gate
    marks and filters. Empty when there is nothing."""
    out: dict = {}
    rules: dict[tuple[str, int], dict] = {}
    for sw, port in _switch_ports(rec, instance).items():
        s = _open_switch(rec, sw)
        try:
            for r in s.rules():
                if port in r.rule.output or port in r.rule.spread:
                    # an exact rule is listed once per flow key pointing at it: counted, not repeated
                    one = rules.setdefault((sw, r.id), {"switch": sw, "rule": r.id, "kind": r.kind, "prio": r.prio,
                                                        "match": str(r.match) if r.kind == "wild" else None, "keys": 0})
                    one["keys"] += r.kind == "exact"
        finally:
            s.close()
    if rules:
        out["rules"] = list(rules.values())
    node = rec["nodes"][instance]
    if not Path(node.get("pin", "/nonexistent")).exists():
        return out
    nf = open_node(rec.nf(instance))
    try:
        entries = {t.name: nf.maps[t.name].export()[0] for t in tables(nf.kind, ("per-flow",))}
        if any(entries.values()):
            out["flows"] = entries
        g = Gate(nf)
        marks, filters = len(g.marks()), len(g.filters())
        if marks:
            out["marks"] = marks
        if filters:
            out["filters"] = filters
    finally:
        nf.maps.close()
    return out


def describe(held: dict) -> str:
    parts = []
    if held.get("rules"):
        parts.append(f"{len(held['rules'])} switch rule(s) send to it ("
                     + ", ".join(f"{r['switch']} #{r['rule']}" for r in held["rules"]) + ")")
    if held.get("flows"):
        parts.append("per-flow state " + ", ".join(f"{t} {n}" for t, n in held["flows"].items() if n))
    for what in ("marks", "filters"):
        if held.get(what):
            parts.append(f"{held[what]} gate {what}")
    return "; ".join(parts)


def teardown(rec, instance: str, clock: StepClock | None = None, progress=None) -> dict:
    """Take the instance out, whatever of it exists (an add that failed half way made only
    part of it); the record is saved as it goes. Returns what was done."""
    clock = clock or StepClock()
    progress = progress or (lambda msg: None)
    nodes = rec["nodes"]
    node = nodes.get(instance)
    if node is None:
        return {}
    done: dict = {}
    with clock.step("agent"):
        done["agent_stopped"] = agent_procs.stop(rec, instance)["was_running"]
        agent_procs.log_path(rec["name"], instance).unlink(missing_ok=True)
    if node.get("kind") == "nat" and "nat_ports" not in node and Path(node.get("pin", "/nonexistent")).exists():
        node["nat_ports"] = _nat_slice(rec, instance)
    with clock.step("peers"):
        done["peers"] = _leave_peers(rec, instance)
    with clock.step("switch"):
        done["switch_ports"] = _drop_switch_ports(rec, instance)
    progress(f"{instance}: namespace")
    with clock.step("netns_links"):
        done["netns"] = _delete_netns(rec, instance)
    with clock.step("pins"):
        pin.unpin(registry.pin_root(rec["name"]) / instance)
    _forget(rec, instance)
    return done


def _switch_ports(rec, instance: str) -> dict[str, str]:
    return {sw: n["ifaces"][instance] for sw, n in rec["nodes"].items()
            if n.get("role") == "switch" and instance in n.get("ifaces", {})}


def _open_switch(rec, sw: str) -> Switch:
    n = rec["nodes"][sw]
    return Switch.open(sw, n["ns"], Path(n["pin"]))


def _nat_slice(rec, instance: str) -> list[int] | None:
    try:
        nf = open_node(rec.nf(instance))
    except NfxError:
        return None
    try:
        c = nf.config()
        return [c.port_lo, c.port_hi]
    finally:
        nf.maps.close()


def _leave_peers(rec, instance: str) -> list[str]:
    """Every other instance's tx slot toward this one back (their peer link's end goes with
    this one's namespace)."""
    left = []
    for other, o in rec["nodes"].items():
        slot = (o.get("peer_slots") or {}).get(instance) if other != instance else None
        if slot is None:
            continue
        try:
            nf = open_node(rec.nf(other))
            try:
                nf.drop_peer(slot)
            finally:
                nf.maps.close()
        except NfxError as e:         # that instance's own pins are gone: nothing sends there
            log.warning("%s: tx slot %d toward %s not taken back: %s", other, slot, instance, e)
        del o["peer_slots"][instance]
        rec.save()
        left.append(other)
    return left


def _drop_switch_ports(rec, instance: str) -> list[str]:
    dropped = []
    for sw, port in _switch_ports(rec, instance).items():
        if Path(rec["nodes"][sw].get("pin", "/nonexistent")).exists():
            s = _open_switch(rec, sw)
            try:
                switch_ports.drop_port(s, port, detach=False)     # the namespace's deletion takes the link
            finally:
                s.close()
        n = rec["nodes"][sw]
        del n["ifaces"][instance]
        if port in n.get("ports", []):
            n["ports"].remove(port)
        rec.save()
        dropped.append(sw)
    return dropped


def _delete_netns(rec, instance: str) -> bool:
    """Delete the namespace and wait until the veth ends it had in other namespaces are gone
    (the kernel dismantles a namespace in the background), so the names are free again."""
    node = rec["nodes"][instance]
    ns = node["ns"]
    if not netns.exists(ns):
        return False
    ends = [(rec["nodes"][sw]["ns"], port) for sw, port in _switch_ports(rec, instance).items()]
    ends += [(o["ns"], f"p{node['index']}") for other, o in rec["nodes"].items()
             if o.get("role") == "nf" and other != instance and "index" in node]
    mg = rec.get("mgmt") or {}
    if mg.get("ns"):
        ends.append((mg["ns"], instance))
    netns.delete(ns)
    end = time.monotonic() + GONE_WAIT_S
    with netlink.Sockets() as nls:
        for where, ifname in ends:
            if not netns.exists(where):
                continue
            while nls[where].ipr.link_lookup(ifname=ifname):
                if time.monotonic() > end:
                    raise Timeout(f"{ifname} in {where} is still there {GONE_WAIT_S:g} s after {ns} was deleted")
                time.sleep(0.002)
    return True


def _forget(rec, instance: str) -> None:
    node = rec["nodes"].pop(instance)
    created = rec.get("created", {})
    for kind, item in (("netns", node["ns"]), ("nf", instance), ("agent", instance)):
        if item in created.get(kind, []):
            created[kind].remove(item)
    (rec.get("mgmt") or {}).get("agents", {}).pop(instance, None)
    if node.get("nat_ports"):
        rec.setdefault("nat_retired", []).append(list(node["nat_ports"]))
    rec["instances"] = len(slots.instances(rec))
    rec.save()
