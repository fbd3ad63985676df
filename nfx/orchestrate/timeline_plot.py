"""The loop's timeline as a PNG (matplotlib's Agg): pps per instance as the monitor sampled it,
the budget, the instance count, and a marker per action (add, move, remove); the sink's
verdict over the whole run in the title."""
from pathlib import Path

COLORS = {"add": "tab:green", "move": "0.55", "remove": "tab:red"}


def plot(tl: dict, path: str | Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    fig, ax = plt.subplots(figsize=(11, 5.5))
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
        verdict = (f"; sent {s['sent']:,}, lost {s['lost']}, duplicated {s['duplicated']}, reordered {s['reordered']}"
                   + (f", p99 {lat['p99'] / 1000:.1f} ms" if lat.get("p99") is not None else ""))
    ax.set_title((title + "\n" if title else "") +
                 f"{s['scale_outs']} scale-outs, {s['scale_ins']} scale-ins, {s['moves']} moves "
                 f"(green: add, grey: move, red: remove; dotted: failed){verdict}", fontsize=9)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
