"""The loop's timeline as a PNG (matplotlib's Agg): pps per instance as the monitor sampled it,
the budget, the instance count, and a marker per action (add, move, remove); below, the sink's
p99 latency per quarter second and the packets sent but not (yet) received; the sink's verdict
over the whole run in the title."""
from pathlib import Path

COLORS = {"add": "tab:green", "move": "0.55", "remove": "tab:red"}


def plot(tl: dict, path: str | Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    ts = tl.get("traffic_samples") or []
    if ts:
        fig, (ax, ax3) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, height_ratios=[3, 1.4])
    else:
        fig, ax = plt.subplots(figsize=(11, 5.5))
        ax3 = None
    by: dict[str, tuple[list, list]] = {}
    for s in tl["samples"]:
        xs, ys = by.setdefault(s["instance"], ([], []))
        xs.append(s["t"])
        ys.append(s["pps"] / 1000)
    for name in sorted(by, key=lambda n: (len(n), n)):
        xs, ys = by[name]
        ax.plot(xs, ys, lw=1.2, label=name)
    cap = tl.get("capacity_pps")
    if cap:
        ax.axhline(cap / 1000, color="tab:red", ls="--", lw=1, label=f"budget {cap / 1000:g}k pps")
    for a in tl["actions"]:
        ax.axvline(a["start"], color=COLORS.get(a["kind"], "k"), lw=0.8 if a["kind"] == "move" else 1.5,
                   ls="-" if a.get("ok") else ":", alpha=0.8)
    if ax3 is None:
        ax.set_xlabel("s since the loop started")
    ax.set_ylabel("kpps per instance (monitor, every sample)")
    ax2 = ax.twinx()
    inst = tl.get("instances") or []
    if inst:
        xs = [i["t"] for i in inst] + [tl["summary"]["duration_s"]]
        ys = [len(i["names"]) for i in inst]
        ax2.step(xs, ys + ys[-1:], where="post", color="k", lw=1.5, label="instances")
        ax2.set_ylim(0, max(ys) + 1)
    ax2.set_ylabel("instances")
    s = tl["summary"]
    verdict = ""
    if s.get("sent") is not None:
        lat = s.get("latency_us") or {}
        verdict = (f"; sent {s['sent']:,}, lost {s['lost']}"
                   + (f" (interfaces dropped {s['path_drops']:,})" if s.get("path_drops") else "")
                   + f", duplicated {s['duplicated']}, reordered {s['reordered']}"
                   + (f", p99 {lat['p99'] / 1000:.1f} ms" if lat.get("p99") is not None else ""))
    ax.set_title((title + "\n" if title else "") +
                 f"{s['scale_outs']} scale-outs, {s['scale_ins']} scale-ins, {s['moves']} moves "
                 f"(green: add, grey: move, red: remove; dotted: failed){verdict}", fontsize=9)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    if ax3 is not None:
        xs = [x["t"] for x in ts]
        ax3.plot(xs, [(x["p99_us"] or 0) / 1000 for x in ts], color="tab:purple", lw=1.2, label="p99 latency (ms)")
        ax3.set_ylabel("p99 ms (per 0.25 s)")
        ax4 = ax3.twinx()
        ax4.plot(xs, [x["sent"] - x["received"] for x in ts], color="tab:gray", lw=1, ls="--",
                 label="sent - received (in flight or lost)")
        ax4.set_ylabel("packets")
        for a in tl["actions"]:
            ax3.axvline(a["start"], color=COLORS.get(a["kind"], "k"), lw=0.6, alpha=0.5)
        h3, l3 = ax3.get_legend_handles_labels()
        h4, l4 = ax4.get_legend_handles_labels()
        ax3.legend(h3 + h4, l3 + l4, loc="upper right", fontsize=8)
        ax3.set_xlabel("s since the loop started")
        ax3.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
