"""nfx testbed up|down|status|join|unjoin|lend|unlend"""
import typer
from rich.table import Table

from .. import registry
from ..nfs import nf_class
from ..testbed import builder, join, lend as lending, topology
from .common import JsonOpt, NameOpt, console, emit_json, need_root, progress, report, show

app = typer.Typer(no_args_is_help=True, help="Build, inspect and remove netns testbeds.")


@app.command()
def up(name: str = NameOpt,
       topology_: str = typer.Option("sharp", "--topology", "-t", help="Topology name in netns/ or a .json file."),
       nf: str = typer.Option("nat", "--nf", help="NF kind for every instance: nat or ids."),
       instances: int = typer.Option(None, "--instances", "-i", help="NF instances (default: the topology's)."),
       max_flows: int = typer.Option(262144, "--max-flows", help="Per-flow map size of every instance."),
       ctrl_delay_ms: float = typer.Option(0.0, "--ctrl-delay-ms",
                                           help="Emulated one-way delay on the control channel (controller to agents and switches)."),
       nf_set: list[str] = typer.Option(None, "--nf-set",
                                        help="NF config field as name=value, repeatable: e.g. host_quota=64 (nat), "
                                             "drop_uninspected=true or scan_threshold=10 (ids)."),
       statelet_ring_kib: int = typer.Option(None, "--statelet-ring-kib",
                                             help="Size of every instance's statelet ring (SLiM's moves), a power of two "
                                                  "(default 16384: about 1.7 s of IDS statelets at 100k pps)."),
       hold_slots: int = typer.Option(None, "--hold-slots",
                                      help="Packet slots of every instance's hold FIFO (held packets kept in the gate), "
                                           "a power of two, 16-65536 (default 16384: 24 MiB; a move that fills it "
                                           "goes on through the buffer ring)."),
       queues: int = typer.Option(None, "--queues", "-q",
                                  help=f"rx and tx queues of every data-plane veth, 1-{topology.MAX_QUEUES} "
                                       "(default: the topology's, else 1); XDP runs one NAPI per rx queue."),
       mgmt: str = typer.Option(None, "--mgmt", help="The management network (default: the topology's, "
                                "10.255.0.0/24); two testbeds that `nfx testbed join` need different ones."),
       json_: bool = JsonOpt):
    """Create a testbed: namespaces, veths, switches, NF instances (attached and pinned)."""
    need_root()
    topo = topology.load(topology_, instances, queues, mgmt)
    nf_class(nf)                     # an unknown kind fails before anything is built
    rec = builder.up(name, topo, nf, max_flows, progress=None if json_ else progress, ctrl_delay_ms=ctrl_delay_ms,
                     nf_settings=nf_set, statelet_ring_kib=statelet_ring_kib, hold_slots=hold_slots)
    if json_:
        emit_json({"name": name, "status": rec["status"], "topology": topo.name, "nf": nf,
                   "instances": topo.instances, "queues": topo.queues, "netns": rec["created"]["netns"],
                   "agents": {n: (i.get("agent") or {}).get("pid") for n, i in rec["nodes"].items()
                              if i["role"] == "nf"}})
    else:
        console.print(f"[green]testbed {name} up[/green]: {topo.name}, {topo.instances} × {nf}"
                      + (f", {topo.queues} queues a veth" if topo.queues > 1 else ""))


@app.command()
def down(name: str = NameOpt, json_: bool = JsonOpt):
    """Remove a testbed and everything it created (namespaces, links, programs, pins)."""
    need_root()
    removed = builder.down(name)
    if json_:
        emit_json({"name": name, "removed": removed})
    else:
        console.print(f"testbed {name} down: {removed.get('agents', 0)} agents stopped, {removed['netns']} namespaces, "
                      f"{removed['pins']} pin sets removed")


@app.command()
def status(name: str = typer.Option(None, "--name", "-n", help="One testbed (default: all)."),
           json_: bool = JsonOpt):
    """Show testbeds, their nodes and per-instance counters."""
    need_root()
    names = [registry.check_name(name)] if name else registry.names()
    reports = [builder.status(n) for n in names]
    if json_:
        emit_json({"testbeds": reports})
        return
    if not reports:
        console.print("no testbeds")
        return
    for r in reports:
        t = Table(title=f"{r['name']}: {r['topology']} · {r['instances']} × {r['nf']} · "
                        f"{r.get('queues', 1)} queue{'s' if r.get('queues', 1) > 1 else ''} · {r['status']}")
        t.add_column("node")
        t.add_column("role")
        t.add_column("netns")
        t.add_column("detail")
        for node, n in r["nodes"].items():
            detail = n.get("addr") or ", ".join(f"{k}={v}" for k, v in sorted(n.get("stats", {}).items())[:6])
            t.add_row(node, n["role"], n["netns"] + ("" if n["alive"] else " [red](gone)[/red]"), detail or "")
        show(t)
        for c, members in r.get("clusters", {}).items():
            console.print(f"cluster {c}: {', '.join(members)}")


@app.command("join")
def join_(name: str = NameOpt, peer: str = typer.Option(..., "--peer", help="The other testbed (the other machine)."),
          rate_mbit: float = typer.Option(0.0, "--rate-mbit", help="The link's capacity each way in Mbit/s (a tbf at "
                                          "each end; 0: as fast as the machine goes). Trunks, state and management "
                                          "traffic share it."),
          json_: bool = JsonOpt):
    """Join two testbeds as two machines: a routed link between their management networks (each
    routes the other's, its NF namespaces too), so one etcd and each other's agents are in reach;
    and a trunk (VXLAN over that link) between each pair of their switches of the same name."""
    need_root()
    report(join.join(name, peer, rate_mbit), json_, lambda r: f"[green]{name} and {peer} joined[/green]: {r['mgmt'][name]} <-> "
           f"{r['mgmt'][peer]} over {r['transit']} ({r['addrs'][name]}, {r['addrs'][peer]}); "
           f"trunks at {', '.join(r['trunks']) or 'no switch'}" + (f"; {rate_mbit:g} Mbit/s each way" if rate_mbit else ""))


@app.command()
def unjoin(name: str = NameOpt, json_: bool = JsonOpt):
    """Undo `nfx testbed join` (testbed down of either does it too)."""
    need_root()
    report(join.unjoin(name), json_, lambda r: f"{name} and {r['peer']} no longer joined")


@app.command()
def lend(name: str = NameOpt, instance: str = typer.Option(..., "--instance", help="The instance to lend (nf1, ...)."),
         json_: bool = JsonOpt):
    """Lend an instance to the joined testbed: it serves what that testbed's switches send over the
    trunks, and that testbed's controller moves flows to it as INSTANCE@NAME."""
    need_root()
    report(lending.lend(name, instance), json_,
           lambda r: f"[green]{name} lends {instance} to {r['peer']}[/green]: there it is {r['as']}")


@app.command()
def unlend(name: str = NameOpt, json_: bool = JsonOpt):
    """Take back the lent instance (its rules at this testbed's switches)."""
    need_root()
    report(lending.unlend(name), json_, lambda r: f"{name} lends {r['instance']} no more")
