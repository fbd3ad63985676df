"""The cluster bench's figures (PNG, matplotlib's Agg) and its markdown table, beside what the
slides report (seeds/cluster-state-management-slides.txt): a clustered system has higher
throughput than one where every NF shares with all the others, the more so at higher packet
rates; a migration inside a cluster sends only the state of the latest batch."""
from pathlib import Path

from .sharp_plot import machine

LAYOUTS = {"none": "no sharing", "clustered": "3 clusters of 4", "flat": "1 cluster of 12 (all share with all)"}
SLIDES = ("Slides: clustered throughput > not clustered, for every batch size and rate, more so at high rates; "
          "a migration inside a cluster sends only the latest batch's state (their figures' values are not in the "
          "text we have).")


def _rows(r, layout, sweep: str):
    return [x for x in r["rows"] if x["layout"] == layout and x["sweep"] == sweep]


def table(r: dict) -> str:
    out = [f"# nfx bench cluster ({r['nf']}, {r['flows']} flows, {r['duration_s']} s a point) on {machine()}", "",
           SLIDES, "", f"## Throughput against S_batch (offered {max(r['rates']):,} pps)", "",
           "| layout | S_batch | throughput pps | lost | agents CPU s | batches | bytes to members |", "|---|---|---|---|---|---|---|"]
    for layout in LAYOUTS:
        for x in _rows(r, layout, "batch"):
            out.append(f"| {LAYOUTS[layout]} | {x['batch'] or '-'} | {x['throughput_pps']:,} | {x['lost']:,} | "
                       f"{x['agents_cpu_s']:.2f} | {x.get('batches', '-')} | {x.get('bytes_to_members', '-')} |")
    out += ["", f"## Throughput against the offered rate (S_batch {r['slides_batch']})", "",
            "| layout | offered pps | throughput pps | lost | agents CPU s |", "|---|---|---|---|---|"]
    for layout in LAYOUTS:
        for x in _rows(r, layout, "rate"):
            out.append(f"| {LAYOUTS[layout]} | {x['offered_pps']:,} | {x['throughput_pps']:,} | {x['lost']:,} | "
                       f"{x['agents_cpu_s']:.2f} |")
    out += ["", "## Migration overhead (op, opennf, under traffic)", "",
            "| move | flows | sent: entries or statelets | batches | bytes | move s | lost | reordered |",
            "|---|---|---|---|---|---|---|---|"]
    for m in r["moves"]:
        out.append(f"| {m['kind']} ({m['src']} → {m['dst']}) | {m['flows']} | {m['entries']} | {m.get('batches') or '-'} | "
                   f"{m['state_bytes']:,} | {m['move_time_s']:.3f} | {m['lost']} | {m['reordered']} |")
    return "\n".join(out) + "\n"


def plot(r: dict, d: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    base = [x for x in _rows(r, "none", "rate") if x["offered_pps"] == max(r["rates"])]
    for layout, style in (("clustered", "o-"), ("flat", "s--")):
        xs = _rows(r, layout, "batch")
        ax.plot([x["batch"] for x in xs], [x["throughput_pps"] for x in xs], style, label=LAYOUTS[layout])
    if base:
        ax.axhline(base[0]["throughput_pps"], color="grey", lw=1, label="no sharing")
    ax.set_xscale("log")
    ax.set_xlabel("S_batch (packets of a flow per shared batch)")
    ax.set_ylabel("throughput (packets/s at the sink)")
    ax.set_title(f"{r['nf'].upper()}: throughput against batch size, 12 NFs, {max(r['rates']):,} pps offered")
    ax.legend()
    paths.append(_save(fig, d / "cluster-batch.png"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for layout, style in (("none", "^:"), ("clustered", "o-"), ("flat", "s--")):
        xs = _rows(r, layout, "rate")
        ax.plot([x["offered_pps"] for x in xs], [x["throughput_pps"] for x in xs], style, label=LAYOUTS[layout])
    ax.set_xlabel("offered packet rate (packets/s)")
    ax.set_ylabel("throughput (packets/s at the sink)")
    ax.set_title(f"{r['nf'].upper()}: throughput against packet rate (S_batch {r['slides_batch']})")
    ax.legend()
    paths.append(_save(fig, d / "cluster-rate.png"))
    if r["moves"]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ms = r["moves"]
        ax.bar([f"{m['kind']}\n{m['src']}→{m['dst']}" for m in ms], [m["state_bytes"] / max(1, m["flows"] or 1) for m in ms])
        ax.set_ylabel("bytes sent per moved flow key")
        ax.set_title("migration overhead: inside a cluster vs across")
        paths.append(_save(fig, d / "cluster-migration.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
