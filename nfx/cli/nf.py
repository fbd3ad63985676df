"""nfx nf: look into running NF instances (counters, NAT mappings, idle sweep)."""

import typer
from rich.table import Table

from .. import registry
from .. import upgrade as up
from ..agent.client import AgentClient
from ..errors import BadInput, NfxError
from ..procs import agents
from ..testbed import builder, grow, shrink
from .common import JsonOpt, NameOpt, emit_json, need_root, out, progress, show

app = typer.Typer(no_args_is_help=True, help="Inspect, maintain, add and remove NF instances.")
InstOpt = typer.Option(..., "--instance", "-I", help="NF instance (node name, e.g. nf0).")


@app.command("list")
def list_(name: str = NameOpt, json_: bool = JsonOpt):
    """List a testbed's NF instances and their agents (pid, alive, answering)."""
    need_root()
    rec = registry.load(name)
    rows = []
    for n, i in rec["nodes"].items():
        if i["role"] != "nf":
            continue
        a = agents.status(rec, n) if "pin" in i else {"pid": None, "alive": False}
        a["answering"] = False
        if a["alive"]:
            try:
                with AgentClient(name, n, timeout=2) as c:
                    a["answering"] = c.ping()["pid"] == a["pid"]
            except NfxError:
                pass
        rows.append({"instance": n, "kind": i.get("kind"), "netns": i["ns"], "pin": i.get("pin"), "agent": a})
    if json_:
        emit_json({"instances": rows})
        return
    t = Table("instance", "kind", "netns", "agent pid", "alive", "address", "pin")
    for r in rows:
        a = r["agent"]
        alive = "[green]yes[/green]" if a["answering"] else ("[yellow]not answering[/yellow]" if a["alive"]
                                                              else "[red]no[/red]")
        t.add_row(r["instance"], r["kind"] or "", r["netns"], str(a["pid"] or "-"), alive,
                  f"{a.get('addr')}:{a.get('port')}" if a.get("addr") else "-", r["pin"] or "")
    show(t)


def _targets(rec, instance: str | None) -> list[str]:
    return rec.instances() if instance is None else [instance]


def _timings(t: dict) -> str:
    return ", ".join(f"{k} {v:.0f} ms" for k, v in t.items() if k != "total") + f"; total {t['total']:.0f} ms"


@app.command()
def add(name: str = NameOpt,
        instance: str = typer.Option(None, "--instance", "-I", help="Its name (default: the next free nfN)."),
        json_: bool = JsonOpt):
    """Add an NF instance to a running testbed, made like its others: netns, links to the switches
    and to every other instance, program (the testbed's NF), agent, switch ports. A NAT gets a
    port slice no instance uses (README, "Instances at runtime"). Moves may name it once this
    returns; anything that fails is undone."""
    need_root()
    r = grow.add(name, instance, progress=None if json_ else progress)
    if json_:
        emit_json(r)
        return
    out.print(f"{name}/{r['instance']} added ({r['kind']}, like {r['like']}): index {r['index']}, tx slot {r['tx_slot']}, "
              f"agent pid {r['agent']['pid']} at {r['agent']['addr']}:{r['agent']['port']}"
              + (f", NAT ports {r['nat_ports'][0]}-{r['nat_ports'][1]}" if r["nat_ports"] else ""))
    out.print(f"  {_timings(r['timings_ms'])}")
    if r["program_load_ms"]:
        out.print(f"  the program's load took {r['program_load_ms']:.0f} ms from the start, beside the other steps; "
                  "program_load is what was left of it to wait for")


@app.command()
def remove(name: str = NameOpt, instance: str = InstOpt,
           force: bool = typer.Option(False, "--force", help="Remove it even if it still holds flows or "
                                      "switch rules send to it (its flows are lost)."),
           json_: bool = JsonOpt):
    """Remove an NF instance from a running testbed: its agent, program, switch ports, links,
    netns and record. Refused while it holds flows, gate marks or filters, or a switch rule sends
    to it (move its flows away first), unless --force."""
    need_root()
    r = shrink.remove(name, instance, force=force, progress=None if json_ else progress)
    if json_:
        emit_json(r)
        return
    out.print(f"{name}/{instance} removed" + (f" (forced: it held {shrink.describe(r['held'])})" if r["forced"] else ""))
    out.print(f"  {_timings(r['timings_ms'])}")
    if r["held"].get("rules"):
        out.print(f"  [yellow]the switch rules that sent to {instance} send nowhere now[/yellow]: a move of the same "
                  f"filter to another instance repoints them (nfx move --name {name} --from ANY --to nf0)")


@app.command()
def start(name: str = NameOpt,
          instance: str = typer.Option(None, "--instance", "-I", help="NF instance (default: every one without a running agent)."),
          json_: bool = JsonOpt):
    """Start an instance's agent; it re-adopts the pinned maps and the attached program."""
    need_root()
    rec = registry.load(name)
    targets = _targets(rec, instance)
    if instance is None:
        targets = [n for n in targets if not agents.pid_of(rec, n)]
    started = agents.start(rec, targets) if targets else {}
    res = {"started": {n: {"pid": a["pid"], "addr": a["addr"], "port": a["port"], "log": a["log"]}
                       for n, a in started.items()}}
    if json_:
        emit_json(res)
    elif not started:
        out.print("every agent already runs")
    else:
        for n, a in res["started"].items():
            out.print(f"agent of {n} started: pid {a['pid']}, {a['addr']}:{a['port']}, log {a['log']}")


@app.command()
def stop(name: str = NameOpt,
         instance: str = typer.Option(None, "--instance", "-I", help="NF instance (default: every one)."),
         json_: bool = JsonOpt):
    """Stop an instance's agent (the NF keeps running: its program stays attached)."""
    need_root()
    rec = registry.load(name)
    res = [agents.stop(rec, n) for n in _targets(rec, instance)]
    if json_:
        emit_json({"stopped": res})
        return
    for r in res:
        what = (f"stopped (pid {', '.join(map(str, r['pids']))})" if r["stopped"] else "did not stop") \
            if r["was_running"] else "was not running"
        out.print(f"agent of {r['instance']}: {what}")


@app.command()
def stats(name: str = NameOpt, instance: str = InstOpt, json_: bool = JsonOpt):
    """Verdict and reason counters of one instance."""
    need_root()
    nf = builder.instance(name, instance)
    s = nf.stats()
    # the IDS's LRU tables evict silently: shown as created - present per table
    ev = nf.evictions() if nf.kind == "ids" else {}
    if json_:
        emit_json({"instance": instance, "stats": s, **({"evicted": ev} if ev else {})})
        return
    t = Table("counter", "value", title=f"{name}/{instance}")
    for k, v in sorted(s.items()):
        t.add_row(k, f"{v:,}")
    for k, v in ev.items():
        t.add_row(f"evicted from {k}", f"{v:,}")
    show(t)


@app.command()
def mappings(name: str = NameOpt, instance: str = InstOpt, limit: int = typer.Option(50, help="Rows to show."),
             json_: bool = JsonOpt):
    """NAT connections of one instance: inside flow, public address, counters."""
    need_root()
    nf = builder.instance(name, instance)
    if nf.kind != "nat":
        raise BadInput(f"{instance} runs {nf.kind}, not nat")
    rows = nf.mappings()
    if json_:
        emit_json({"instance": instance, "count": len(rows), "mappings": rows})
        return
    t = Table("proto", "inside", "remote", "public", "out pkts", "in pkts", "idle s", title=f"{len(rows):,} mappings")
    for m in rows[:limit]:
        t.add_row(m["proto"], f"{m['src']}:{m['sport']}", f"{m['dst']}:{m['dport']}", m["public"],
                  str(m["pkts_out"]), str(m["pkts_in"]), str(m["idle_s"]))
    show(t)


@app.command()
def sweep(name: str = NameOpt, instance: str = InstOpt, json_: bool = JsonOpt):
    """Evict idle NAT connections now (the datapath also evicts them when their flow or port is reused)."""
    need_root()
    nf = builder.instance(name, instance)
    if nf.kind != "nat":
        raise BadInput(f"{instance} runs {nf.kind}, not nat")
    n = nf.sweep()
    if json_:
        emit_json({"instance": instance, "evicted": n})
    else:
        out.print(f"evicted {n} idle connections")


# ---- hot upgrade (nfx/upgrade/) ------------------------------------------------------------------
@app.command()
def upgrade(name: str = NameOpt, instance: str = InstOpt,
            source: str = typer.Option(None, "--source", help="A .bpf.c file (default: the NF's own bpf/<kind>.bpf.c)."),
            define: list[str] = typer.Option(None, "--define", "-D", help="K=V on top of the running build's defines (repeatable)."),
            undefine: list[str] = typer.Option(None, "--undefine", "-U", help="Drop a define of the running build (repeatable)."),
            conversion: str = typer.Option(None, "--conversion", help="A built-in table layout conversion (nat-v2, nat-v1); "
                                           "implies its defines."),
            keep_agent: bool = typer.Option(False, "--keep-agent", help="Do not restart the instance's agent (it keeps "
                                            "the replaced maps open until restarted)."),
            json_: bool = JsonOpt):
    """Replace an instance's XDP program while it runs, keeping every table and losing no packet.

    Without --conversion every table must keep its layout and the new program shares the running one's maps; with it, the converted tables are copied into new maps in two passes around the atomic swap. Any failure before the swap changes nothing."""
    need_root()
    defines = up.parse_defines(define)
    for k in undefine or []:
        defines[k] = None
    r = up.upgrade(name, instance, source=source, defines=defines, conversion=conversion,
                   progress=None if json_ else progress)
    agents.restart_stale(name, instance, r, restart=not keep_agent)
    if json_:
        emit_json(r)
        return
    sw = r["swap"]
    out.print(f"{name}/{instance}: program {r['old_prog_id']} -> {r['new_prog_id']} on {', '.join(r['interfaces'])} "
              f"({r['mode']}); swap {sw['total_us']:.0f} us, sides at most {sw['sides_apart_max_us']:.0f} us apart")
    for p in r["passes"]:
        out.print(f"  pass {p['pass']:<12} {p['table']:<10} " +
                  ", ".join(f"{k} {v}" for k, v in p.items() if k not in ("pass", "table")))
    if r.get("agent"):
        out.print(f"  agent restarted: pid {r['agent']['old_pid']} -> {r['agent']['pid']} ({r['agent']['restart_ms']:.0f} ms)")
    if r.get("conflicts"):
        out.print(f"  [yellow]{len(r['conflicts'])} keys were created by both programs: the new program's entries kept[/yellow]")
    for w in r.get("warnings", []):
        out.print(f"  [yellow]warning:[/yellow] {w}")
