"""nfx cluster up|down|status"""
import typer
from rich.table import Table

from ..cluster import manage
from ..cluster import pairs as P
from ..cluster.sharing import DEFAULT_BATCH, DEFAULT_IDLE_MS
from .common import JsonOpt, NameOpt, console, emit_json, need_root, progress, report, show

app = typer.Typer(no_args_is_help=True,
                  help="Clusters of NF instances: batched state sharing inside each, global state on etcd.")


@app.command()
def up(name: str = NameOpt,
       clusters: str = typer.Option(None, "--clusters",
                                    help="Which instances form which cluster, e.g. nf0,nf1/nf2,nf3 "
                                         "(default: the topology's clusters)."),
       batch: str = typer.Option(str(DEFAULT_BATCH), "--batch", help="S_batch: a flow's deltas go to the cluster's "
                                 "members after every this many of its packets (and when it idles or ends); "
                                 "per cluster as c0=10,c1=50, or 30,c1=10 (c1 10, the others 30)."),
       idle_ms: float = typer.Option(DEFAULT_IDLE_MS, "--idle-ms", help="A flow idle this long sends its deltas."),
       etcd: str = typer.Option(None, "--etcd", help="An etcd to use (http://host:port), reachable from the testbed's "
                                "management network; default: start a private one there on free ports, stopped "
                                "by cluster down or testbed down."),
       stamp: bool = typer.Option(True, "--stamp/--no-stamp", help="The switches stamp each flow's packet count "
                                  "on its packets (batches follow the stamps)."),
       pairs: str = typer.Option(None, "--pairs", help="Primary=secondary pairs for failover, e.g. nf0=nf1 "
                                 "(default: the topology's pairs); each pair in one cluster."),
       spares: str = typer.Option(None, "--spares", help="Instances that become a pair's new secondary after a "
                                  "failover, e.g. nf2 (default: the topology's spares)."),
       heartbeat_ms: float = typer.Option(P.DEFAULT_HEARTBEAT_MS, "--heartbeat-ms",
                                          help="Failover: each agent's heartbeat period."),
       misses: int = typer.Option(P.DEFAULT_MISSES, "--misses", help="Failover: heartbeats missed in a row before "
                                  "a primary is failed over."),
       lease_s: int = typer.Option(P.DEFAULT_TTL_S, "--lease-s", help="Failover: each member's etcd lease (whole "
                                   "seconds); its expiry fails a primary over too (the backstop)."),
       send_ms: float = typer.Option(None, "--send-ms", help="Batches go to the members at least this often, "
                                     "ms (default 5; with pairs 0: as soon as they are read, so a failover finds "
                                     "them)."),
       json_: bool = JsonOpt):
    """Bring a testbed's clusters up: etcd, the NAT pool's owners, the stamper, batched sharing, and
    with pairs, failover (a failure detection unit in the controller)."""
    need_root()
    r = manage.up(name, clusters, batch, idle_ms, etcd, stamp, progress=(lambda m: None) if json_ else progress,
                  pairs_text=pairs, spares_text=spares, heartbeat_ms=heartbeat_ms, misses=misses, ttl_s=lease_s,
                  send_ms=send_ms)
    if json_:
        emit_json(r)
        return
    console.print(f"[green]clusters of {name} up[/green]: "
                  + "; ".join(f"{c}: {', '.join(ms)}" for c, ms in r["clusters"].items())
                  + f" · S_batch {manage.batch_text(r['batch'])} · etcd {r['etcd']}"
                  + (" (local)" if r["local_etcd"] else ""))
    if r.get("pairs"):
        console.print("failover: " + ", ".join(f"{p} -> {s}" for p, s in r["pairs"].items())
                      + (f" · spares {', '.join(r['spares'])}" if r["spares"] else "")
                      + f" · heartbeat {heartbeat_ms:g} ms x {misses} · lease {lease_s} s")


@app.command()
def down(name: str = NameOpt, json_: bool = JsonOpt):
    """Stop sharing, turn the stamper off, remove the testbed's keys from etcd, stop a local etcd."""
    need_root()
    r = manage.down(name)
    if json_:
        emit_json(r)
    else:
        console.print(f"clusters of {name} down")


@app.command()
def status(name: str = NameOpt, json_: bool = JsonOpt):
    """Clusters, members in etcd, the NAT pool's owners, and what each member shared and holds."""
    need_root()
    r = manage.status(name)
    if json_:
        emit_json(r)
        return
    if not r["up"]:
        console.print(f"{name}: clusters not up" + (f" (topology clusters: {r['clusters']})" if r["clusters"] else ""))
        return
    t = Table(title=f"{name}: S_batch {manage.batch_text(r['batch'])} · etcd {r['etcd']}")
    for col in ("instance", "cluster", "S_batch", "in etcd", "batches sent", "bytes sent", "replica entries", "errors"):
        t.add_column(col)
    members = {m for ms in (r.get("etcd_members") or {}).values() for m in ms}
    for inst, s in r["instances"].items():
        sh = s.get("sharing") or {}
        rp = s.get("replicas") or {}
        t.add_row(inst, s["cluster"], str(sh.get("batch", "-")), "yes" if inst in members else "no", str(sh.get("batches", "-")),
                  str(sh.get("bytes", "-")), str(rp.get("per_flow", "-")),
                  s.get("error") or ", ".join(sh.get("errors") or {}) or "")
    show(t)
    fo = r.get("failover")
    if fo and not fo.get("error"):
        for slot, s in fo["slots"].items():
            console.print(f"pair {slot}: primary {s['primary']}, secondary {s['secondary'] or '-'}")
        for ev in fo["events"]:
            console.print(f"failed over {ev['failed']} ({ev['by']}): {ev.get('outcome') or ev.get('error')}"
                          + (f", traffic to {ev['promoted']} {ev['steered_ms']} ms after detection" if ev.get("steered_ms") else ""))
        if fo["fenced"]:
            console.print(f"fenced: {', '.join(fo['fenced'])}")
    elif fo:
        console.print(f"failover: {fo['error']}")


@app.command()
def rejoin(name: str = NameOpt, instance: str = typer.Option(..., "--instance", help="The instance that failed."),
           json_: bool = JsonOpt):
    """A failed instance back: its program and agent restarted, fenced, syncing as its pair's
    secondary (or a spare); it takes traffic again only by `nfx cluster failback`."""
    need_root()
    report(manage.rejoin(name, instance), json_, lambda r: f"{instance} rejoined as {r['role']}" + (
        f" of {r['primary']} (pair {r['slot']}, synced in {r['sync_s']} s)" if r["role"] == "secondary" else "")
        + (" · fenced" if r["fenced"] else ""))


@app.command()
def failback(name: str = NameOpt, slot: str = typer.Option(..., "--slot", help="The pair (its first primary's name)."),
             to: str = typer.Option(..., "--to", help="The pair's secondary that takes the traffic back."),
             json_: bool = JsonOpt):
    """Give a pair's traffic back to its secondary, only once it has synced: its fence lifted, the
    pair's record changed in etcd, and an order-preserving move carries the flows."""
    need_root()
    report(manage.failback(name, slot, to), json_,
           lambda r: f"pair {slot}: {r['primary']} serves again ({r['secondary']} stands by), in {r['failback_s']} s")
