"""nfx state export|import|dump|diff: NF state through the instances' agents (never the pins)."""
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import layout as L
from ..agent.client import AgentClient
from ..errors import BadInput, NfxError
from ..state import ops
from ..state.tables import parse_scopes
from .common import JsonOpt, NameOpt, console, emit_json, need_root, out, show

app = typer.Typer(no_args_is_help=True, help="Export, import, dump and compare NF state (through the agents).")
InstOpt = typer.Option(..., "--instance", "-I", help="NF instance (node name, e.g. nf0).")
FilterOpt = typer.Option(None, "--filter", "-f", help="Flow filter, e.g. 'proto=udp src=10.0.1.0/24 dport=53' "
                                                      "(matches both directions; default: all).")
ScopeOpt = typer.Option(None, "--scope", "-s", help="per-flow, multi-flow, all-flows, comma-separated "
                                                    "(default: all three).")
TimeoutOpt = typer.Option(120.0, "--timeout", help="Seconds to wait for the agent.")


def _client(name: str, instance: str, timeout: float):
    return AgentClient(name, instance, timeout=timeout)


class _Progress:
    """Chunks and entries as they go by, on stderr; nothing with --json."""

    def __init__(self, quiet: bool, what: str):
        self.quiet, self.entries, self.chunks = quiet, 0, 0
        self.p = None if quiet else Progress(TextColumn(what), BarColumn(bar_width=None),
                                             TextColumn("{task.fields[entries]:,} entries in {task.fields[chunks]} chunks"),
                                             TimeElapsedColumn(), console=console, transient=True)

    def __enter__(self):
        if self.p:
            self.p.__enter__()
            self.task = self.p.add_task("x", total=None, entries=0, chunks=0)
        return self

    def __call__(self, c) -> None:
        self.entries += c.count
        self.chunks += 1
        if self.p:
            self.p.update(self.task, entries=self.entries, chunks=self.chunks)

    def __exit__(self, *exc):
        if self.p:
            self.p.__exit__(*exc)


@app.command("export")
def export(name: str = NameOpt, instance: str = InstOpt, filter_: str = FilterOpt, scope: str = ScopeOpt,
           output: Path = typer.Option(..., "--output", "-o", help="State file to write."),
           timeout: float = TimeoutOpt, json_: bool = JsonOpt):
    """Write an instance's selected state to a file (its agent exports it)."""
    need_root()
    scopes = parse_scopes(scope)
    c = _client(name, instance, timeout)
    info = c.info()
    tmp = output.with_name(output.name + ".part")
    try:
        with _Progress(json_, f"export {instance}") as prog:
            r = c.export(str(tmp), scopes, filter_, meta={"kind": info["kind"], "layout": info["layout"]},
                         on_chunk=prog)
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        c.close()
    res = {"instance": instance, "kind": info["kind"], "file": str(output), "layout": info["layout"],
           "scopes": list(scopes), "filter": filter_ or "all", "chunks": r["chunks"], "entries": r["entries"],
           "bytes": r["bytes"], "seconds": round(r["seconds"], 4), "agent_export_s": r.get("export_s")}
    if json_:
        emit_json(res)
    else:
        console.print(f"exported {res['entries']:,} entries ({res['chunks']} chunks, {res['bytes']:,} bytes) "
                      f"of {instance} to {output} in {res['seconds']:.3f} s")


@app.command("import")
def import_(file: Path = typer.Argument(..., help="State file written by nfx state export."),
            name: str = NameOpt, instance: str = InstOpt, timeout: float = TimeoutOpt, json_: bool = JsonOpt):
    """Apply a state file to an instance (its agent checks every chunk first: a file of another
    layout or NF kind changes nothing)."""
    need_root()
    meta, chunks = ops.load(str(file))
    c = _client(name, instance, timeout)
    try:
        info = c.info()
        if meta.get("layout") != info["layout"]:
            raise BadInput(f"{file} was written with layout {meta.get('layout')}; {instance} runs layout "
                           f"{info['layout']} (other {info['kind']} headers in bpf/include): refusing to import "
                           f"state of another layout",
                           hint="export it again from an instance built from the same headers")
        if meta.get("kind") and meta["kind"] != info["kind"]:
            raise BadInput(f"{file} holds {meta['kind']} state; {instance} runs {info['kind']}")
        t0 = time.perf_counter()
        with _Progress(json_, f"import {instance}") as prog:
            rep = c.put(chunks, on_chunk=prog)
        secs = time.perf_counter() - t0
    finally:
        c.close()
    res = {"instance": instance, "file": str(file), "chunks": len(chunks), "applied": len(rep["applied"]),
           "failed": rep["failed"], "entries": rep["entries"], "seconds": round(secs, 4),
           "agent_import_s": rep.get("apply_s")}
    if rep["failed"]:
        if json_:
            emit_json(res)
        raise NfxError(f"{len(rep['failed'])} of {len(chunks)} chunks were not applied: " +
                       "; ".join(f"{f['table']} (chunk {f['seq']}): {f['error']}" for f in rep["failed"][:3]))
    if json_:
        emit_json(res)
    else:
        console.print(f"imported {res['entries']:,} entries ({res['applied']} chunks) into {instance} "
                      f"in {res['seconds']:.3f} s")


@app.command("dump")
def dump(name: str = NameOpt, instance: str = InstOpt, filter_: str = FilterOpt, scope: str = ScopeOpt,
         limit: int = typer.Option(50, "--limit", help="Rows per table to show (0: all)."),
         timeout: float = TimeoutOpt, json_: bool = JsonOpt):
    """Show an instance's state, decoded, table by table."""
    need_root()
    scopes = parse_scopes(scope)
    with _client(name, instance, timeout) as c:
        chunks = c.get(scopes, filter_)
    tables: dict[str, dict] = {}
    for ch in chunks:
        t = tables.setdefault(ch.table, {"scope": ch.scope, "count": 0, "entries": []})
        t["count"] += ch.count
        if not limit or len(t["entries"]) < limit:
            for rec in ops.records(ch):
                if limit and len(t["entries"]) >= limit:
                    break
                t["entries"].append({"key": rec["key"], "value": rec["value"]})
    if json_:
        emit_json({"instance": instance, "filter": filter_ or "all", "scopes": list(scopes), "tables": tables})
        return
    if not tables:
        console.print(f"{instance}: no state selected")
    for tname, t in tables.items():
        tab = Table("key", "value", title=f"{instance} {tname} ({t['scope']}): {t['count']:,} entries"
                                          + (f", first {len(t['entries'])}" if len(t["entries"]) < t["count"] else ""))
        for e in t["entries"]:
            tab.add_row(_short(e["key"]), _short(e["value"]))
        show(tab)


def _short(v) -> str:
    if isinstance(v, dict):
        if {"src", "dst", "sport", "dport", "proto"} <= set(v):
            return f"{v['proto']} {v['src']}:{v['sport']} > {v['dst']}:{v['dport']}"
        return " ".join(f"{k}={_short(x)}" for k, x in v.items())
    return str(v)


def _side(spec: str, name: str, scopes, flt, timeout: float):
    """A file, or instance:NAME (its live state through its agent)."""
    if spec.startswith("instance:"):
        inst = spec.split(":", 1)[1]
        with _client(name, inst, timeout) as c:
            return c.get(scopes, flt)
    if flt or scopes != parse_scopes(None):
        raise BadInput("--filter and --scope apply to instance:NAME sides only; a file is compared whole")
    return ops.load(spec)[1]


@app.command("diff")
def diff(a: str = typer.Argument(..., help="A state file or instance:NAME."),
         b: str = typer.Argument(..., help="A state file or instance:NAME."),
         name: str = NameOpt, filter_: str = FilterOpt, scope: str = ScopeOpt, timeout: float = TimeoutOpt,
         json_: bool = JsonOpt):
    """Compare two states entry by entry (files, or live instances through their agents)."""
    scopes = parse_scopes(scope)
    if a.startswith("instance:") or b.startswith("instance:"):
        need_root()
    d = ops.diff(_side(a, name, scopes, filter_, timeout), _side(b, name, scopes, filter_, timeout))
    if json_:
        emit_json({"a": a, "b": b, **d})
        return
    if d["same"]:
        console.print(f"[green]same[/green]: {a} and {b} hold the same state")
        return
    t = Table("table", f"only in {a}", f"only in {b}", "changed", title=f"{a} vs {b}")
    for tname, c in sorted(d["by_table"].items()):
        t.add_row(tname, f"{c['only_a']:,}", f"{c['only_b']:,}", f"{c['changed']:,}")
    show(t)
