"""nfx nf: look into running NF instances (counters, NAT mappings, idle sweep)."""
import typer
from rich.table import Table

from ..errors import BadInput
from ..testbed import builder, state
from .common import JsonOpt, NameOpt, emit_json, need_root, out

app = typer.Typer(no_args_is_help=True, help="Inspect and maintain NF instances.")
InstOpt = typer.Option(..., "--instance", "-I", help="NF instance (node name, e.g. nf0).")


@app.command("list")
def list_(name: str = NameOpt, json_: bool = JsonOpt):
    """List a testbed's NF instances."""
    need_root()
    rec = state.load(name)
    rows = [{"instance": n, "kind": i.get("kind"), "netns": i["ns"], "pin": i.get("pin")}
            for n, i in rec["nodes"].items() if i["role"] == "nf"]
    if json_:
        emit_json({"instances": rows})
        return
    t = Table("instance", "kind", "netns", "pin")
    for r in rows:
        t.add_row(r["instance"], r["kind"] or "", r["netns"], r["pin"] or "")
    out.print(t)


@app.command()
def stats(name: str = NameOpt, instance: str = InstOpt, json_: bool = JsonOpt):
    """Verdict and reason counters of one instance."""
    need_root()
    s = builder.instance(name, instance).stats()
    if json_:
        emit_json({"instance": instance, "stats": s})
        return
    t = Table("counter", "value", title=f"{name}/{instance}")
    for k, v in sorted(s.items()):
        t.add_row(k, f"{v:,}")
    out.print(t)


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
    out.print(t)


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
