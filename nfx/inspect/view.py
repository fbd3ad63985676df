"""The inspector's screen: a panel per instance (verdict rates, drop reasons, move activity,
latest alerts and statelets, per-flow rows) and a footer with totals."""
import time

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .flows import flow_text
from .model import DROPS, MOVES, NF_EVENTS, VERDICTS, Instance, Model, changed

SPARK = "▁▂▃▄▅▆▇█"


def _n(x: float | int | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x < 10 and x != int(x):
        return f"{x:.1f}"
    return f"{x:,.0f}"


def _spark(vals) -> str:
    vals = list(vals)
    top = max(vals, default=0)
    return "".join(SPARK[min(int(v / top * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] if top else SPARK[0]
                   for v in vals)


def _table(*cols: str) -> Table:
    t = Table(*cols, box=None, pad_edge=False, show_edge=False, padding=(0, 1), header_style="dim")
    for c in t.columns[1:]:
        c.justify = "right"
    t.columns[0].no_wrap = True
    return t


def _titled(title: str, t: Table) -> Group:
    """A section: its title on a line of its own (a table title would wrap to the table's width)."""
    return Group(Text(title, style="bold", no_wrap=True, overflow="ellipsis"), t)


def _traffic(i: Instance) -> Group:
    t = _table("verdict", "pps", "watched")
    for v in VERDICTS:
        style = "red" if v in ("v_drop", "v_aborted") and i.drop_pps else None
        t.add_row(Text(v[2:], style=style), _n(i.rate(v)), _n(i.since(v)))
    t.add_row(Text(_spark(i.pps)[-20:], style="cyan"), "", "")
    return _titled(f"packets {_n(i.verdict_pps)} pps", t)


def _reasons(i: Instance) -> Group:
    t = _table("reason", "/s", "watched")
    drops = [r for r in DROPS if i.rate(r) or i.since(r)]
    for r in sorted(drops, key=lambda r: (-i.rate(r), -i.since(r))):
        t.add_row(Text(r[2:], style="red" if i.rate(r) else "yellow"), _n(i.rate(r)), _n(i.since(r)))
    if not drops:
        t.add_row(Text("none", style="green"), "", "")
    for r in (r for r in NF_EVENTS if i.rate(r) or i.since(r)):
        t.add_row(Text(r[2:], style="dim"), _n(i.rate(r)), _n(i.since(r)))
    held = f", {_n(i.held_pps)}/s held by a move" if i.held_pps else ""
    return _titled(f"drops {_n(i.drop_pps)}/s{held} · reasons", t)


def _moves(i: Instance) -> Group:
    t = _table("counter", "/s", "watched", "total")
    for m in MOVES:
        style = "bold magenta" if i.rate(m) else (None if i.total.get(m) else "dim")
        t.add_row(Text(m[2:], style=style), _n(i.rate(m)), _n(i.since(m)), _n(i.total.get(m, 0)))
    return _titled("moves", t)


def _alerts(i: Instance, rows: int) -> Group:
    t = _table("time", "kind", "id", "flow")
    t.columns[3].justify = "left"
    for a in list(i.alerts)[-rows:]:
        t.add_row(time.strftime("%H:%M:%S", time.localtime(a["ts"])), a.get("kind", "?"), str(a.get("sig_id", "")),
                  flow_text(a["flow"]) if "flow" in a else "")
    return _titled(f"alerts: {i.seen['alerts'] - i.hidden['alerts']:,} shown, {i.hidden['alerts']:,} filtered out", t)


def _statelets(i: Instance, rows: int) -> Group:
    t = _table("table", "flow", "changed")
    for c in t.columns[1:]:
        c.justify = "left"
    for s in list(i.statelets)[-rows:]:
        t.add_row(s.get("table", "?"), s.get("flow_text", ""), changed(s))
    return _titled(f"statelets: {_n(i.rate('r_statelet'))} records/s in the datapath, {_n(i.recv_rate['statelets'])}/s "
                   f"received, {i.seen['statelets'] - i.hidden['statelets']:,} shown, {i.hidden['statelets']:,} "
                   "filtered out", t)


def _flows(i: Instance, rows: int, flt: str) -> Group:
    f = i.flows or {}
    nat = i.kind == "nat"
    t = _table("flow", "public" if nat else "sig hits", "pkts", "pps", "bytes", "idle s")
    t.columns[1].justify = "left" if nat else "right"
    for r in f.get("rows", [])[:rows]:
        t.add_row(flow_text(r["flow"]), r.get("public", "") if nat else _n(r.get("sig_hits")), _n(r["pkts"]),
                  _n(r["pps"]), _n(r["bytes"]), "-" if r["idle_s"] is None else f"{r['idle_s']:.1f}")
    return _titled(f"flows matching {flt!r}: {f.get('count', 0):,} (top {rows} by packets)", t)


def _title(i: Instance) -> Text:
    st = {"live": "green", "down": "red", "connecting": "yellow", "closed": "dim"}.get(i.status, "white")
    t = Text.assemble((i.name, "bold"), f" · {i.kind or '?'} · ", (i.status, st))
    if i.status == "live" and i.last_event and time.monotonic() - i.last_event > 5:
        t.append(f" · no event for {time.monotonic() - i.last_event:.0f} s", style="yellow")
    return t


def instance_panel(m: Model, i: Instance, streams: list[str], rows: int, top: int) -> Panel:
    parts = []
    if i.error:
        parts.append(Text(f"agent lost: {i.error} (retrying every second)", style="red"))
    if "stats" in streams:
        g = Table.grid(padding=(0, 4))
        g.add_row(_traffic(i), _reasons(i), _moves(i))
        parts.append(g)
    lists = []
    if "alerts" in streams and "alerts" not in i.unavailable:
        lists.append(_alerts(i, rows))
    if "statelets" in streams and "statelets" not in i.unavailable:
        lists.append(_statelets(i, rows))
    if lists:
        g = Table.grid(padding=(0, 4))
        g.add_row(*lists)
        parts.append(g)
    if m.filter_text is not None:
        parts.append(_flows(i, top, m.filter_text))
    for name, why in {**i.unavailable, **i.stream_errors}.items():
        parts.append(Text(f"{name}: {why}", style="dim"))
    return Panel(Group(*parts), title=_title(i), title_align="left", border_style="blue" if i.status == "live" else "red")


def footer(m: Model) -> Text:
    insts = list(m.instances.values())
    s = int(m.watching_s)
    t = Text.assemble(
        (f" {m.testbed} ", "bold reverse"), " ",
        (f"{sum(i.verdict_pps for i in insts):,.0f} pps", "bold cyan"), " · ",
        (f"{sum(i.drop_pps for i in insts):,.0f} drops/s", "red" if any(i.drop_pps for i in insts) else "green"), " · ",
        f"moves {sum(sum(i.rate(x) for x in MOVES) for i in insts):,.0f}/s · ",
        f"alerts {sum(i.seen['alerts'] - i.hidden['alerts'] for i in insts):,} · ",
        f"statelets {sum(i.seen['statelets'] - i.hidden['statelets'] for i in insts):,} · ",
        f"events {m.events:,} · ",
        (f"watching {s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}", "bold"),
    )
    if m.filter_text is not None:
        t.append(f" · flow {m.filter_text}")
    t.append(" · Ctrl-C quits", style="dim")
    return t


def decision_line(d: dict) -> str:
    """One of the loop's decisions, short."""
    what, t = d.get("what"), d.get("t")
    at = f"{t:7.2f}s " if isinstance(t, (int, float)) else ""
    if what == "event":
        return f"{at}{'raised' if d.get('active') else 'cleared'} {d.get('condition')} on {d.get('instance')}"
    if what == "plan":
        acts = d.get("actions") or []
        return at + "plan: " + "; ".join(
            f"{a.get('kind')} {a.get('instance')}" + (f" -> {a.get('dst')} {a.get('filter')}" if a.get("dst") else "")
            + f" ({a.get('reason')})" for a in acts[:3]) + (f"; +{len(acts) - 3} more" if len(acts) > 3 else "")
    if what == "action":
        ok = "done" if d.get("ok") else f"FAILED: {d.get('error')}"
        return (f"{at}{d.get('kind')} {d.get('instance')}" + (f" -> {d.get('dst')}" if d.get("dst") else "")
                + f" {ok} in {d.get('seconds', 0):.2f} s")
    if what == "note":
        extra = {k: v for k, v in d.items() if k not in ("what", "t", "ts", "kind", "instance", "stream")}
        return f"{at}{d.get('kind')} {d.get('instance') or ''} {extra if extra else ''}".rstrip()
    return f"{at}{what}"


def loop_panel(m: Model, rows: int) -> Panel:
    lines = [decision_line(d) for d in list(m.loop)[-rows:]]
    return Panel(Text("\n".join(lines), no_wrap=True, overflow="ellipsis"), title="orchestration loop",
                 title_align="left")


def screen(m: Model, streams: list[str], height: int, top: int) -> Group:
    n = max(1, len(m.instances))
    # fixed lines per panel: borders 2, traffic table ~8, list titles+headers 2, flows title+header 2
    spare = (height - 2) // n - 12 - (2 if m.filter_text is not None else 0)
    rows = max(2, min(8, spare // 2 if m.filter_text is not None else spare))
    top = max(2, min(top, spare - rows)) if m.filter_text is not None else top
    loop = [loop_panel(m, max(3, min(8, spare)))] if m.loop else []
    return Group(*(instance_panel(m, i, streams, rows, top) for i in m.instances.values()), *loop, footer(m))
