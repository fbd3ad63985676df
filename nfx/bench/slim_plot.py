"""The SLiM bench's figures (PNG, matplotlib's Agg) and its markdown table, beside what the
paper reports (seeds/slim-statelets-summary.txt, Sec. 4 and 6): SLiM completes in about a third
of duplication's time at high rates and in under 1 s at 100 Mbit/s; duplication's bandwidth is
about three times the statelets'. Fig. 3's bound is drawn from the σ the runs measured."""
from pathlib import Path

from .sharp_plot import machine

PAPER = {"duration_ratio": 1 / 3, "slim_under_s_at_100": 1.0}
SNAPSHOT_MB = 20                     # Fig. 3: a 20 MB snapshot
FIG3_RATE_MBIT = 100                 # Fig. 3: at 100 Mbit/s of traffic
FIG3_TIMES_S = (1, 2, 5, 10)
PANELS = [("duration_s", "migration duration (s), until dst released all it held"), ("seconds_of_loss", "seconds of loss"),
          ("seconds_rtt_over_15ms", "seconds of RTT > 15 ms"), ("bytes_total", "bytes on the wire")]
STYLE = {("slim", 512): "o-", ("slim", 1400): "s-", ("dup", 512): "o--", ("dup", 1400): "s--"}


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _int(x):
    return None if x is None else int(round(x))


def _duration(r: dict):
    """A run's migration duration: until the destination had released all it held (released_s);
    results from before that figure was kept give their total_s, cleanup included."""
    return r.get("released_s") if r.get("released_s") is not None else r.get("total_s")


def summary(rows) -> dict[tuple, dict]:
    """The runs of each (NF, size, rate, mechanism) as one: medians of the finished runs'
    duration, bytes and σ; the worst hold, loss and RTT figures of all runs; how many finished."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["nf"], r["size"], r["rate_mbit"], r["mechanism"]), []).append(r)
    out = {}
    for k, rs in groups.items():
        done = [r for r in rs if not r.get("error")]
        out[k] = {"runs": len(rs), "finished": len(done), "error": None if done else rs[0].get("error"),
                  "duration_s": _median(_duration(r) for r in done),
                  "bytes_total": _int(_median(r.get("bytes_total") for r in done)),
                  "sigma": _median(r.get("sigma") for r in done),
                  "max_added_delay_ms": max((float(r.get("max_added_delay_ms") or 0) for r in done), default=None),
                  "lost": sum(r["lost"] for r in rs),
                  "seconds_of_loss": max(float(r["seconds_of_loss"]) for r in rs),
                  "seconds_rtt_over_15ms": max(float(r.get("seconds_rtt_over_15ms") or 0) for r in rs),
                  "achieved_pps": min(r["achieved_pps"] for r in rs)}
    return out


def _series(agg, nf, mech, size, key):
    return sorted((k[2], v[key]) for k, v in agg.items()
                  if k[0] == nf and k[3] == mech and k[1] == size and v.get(key) is not None)


def plot(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    agg = summary(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for nf in sorted({r["nf"] for r in rows}):
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        for ax, (key, label) in zip(axes.flat, PANELS):
            for (mech, size), style in STYLE.items():
                pts = _series(agg, nf, mech, size, key)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                            label=f"{'SLiM' if mech == 'slim' else 'duplication'}, {size} B")
            if key == "bytes_total":
                ax.set_yscale("log")             # duplication's bytes are orders of magnitude above
            if key == "duration_s":
                ax.axhline(PAPER["slim_under_s_at_100"], color="grey", ls=":", lw=1,
                           label="paper: SLiM < 1 s at 100 Mbit/s")
            ax.set_xlabel("data rate (Mbit/s)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        j = result.get("joined_mbit")
        where = "" if j is None else f" to a joined testbed ({f'{j:g} Mbit/s link' if j else 'unshaped link'})"
        fig.suptitle(f"SLiM vs duplication on nfx, {nf.upper()}: every flow ({result.get('flows')}) moved{where}\nunder "
                     f"traffic, echoed, order-preserving; median of {result.get('repeat', 1)} run(s); a missing point: "
                     f"no run finished\n{machine()}",
                     fontsize=9)
        fig.tight_layout()
        p = out_dir / f"{_stem(result)}-{nf}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    made.append(fig3(result, out_dir, plt))
    return made


def _stem(result: dict) -> str:
    return "slim" if result.get("joined_mbit") is None else "slim-joined"


def sigma_bound(capacity_mbit: float, t_s: float, snapshot_mb: float = SNAPSHOT_MB,
                rate_mbit: float = FIG3_RATE_MBIT) -> float:
    """The largest σ with which a migration finishes within t_s: the snapshot and the statelets
    produced meanwhile must cross the link, S + σ·R·t <= C·t."""
    return max(0.0, (capacity_mbit * t_s - snapshot_mb * 8) / (rate_mbit * t_s))


def fig3(result: dict, out_dir: Path, plt) -> Path:
    """Fig. 3: the maximum σ against the link's capacity, per migration time, with the σ each NF
    and frame size measured (and duplication's σ = 1)."""
    caps = [c / 2 for c in range(0, 2001)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in FIG3_TIMES_S:
        ax.plot(caps, [sigma_bound(c, t) for c in caps], label=f"migration within {t} s")
    ax.axhline(1.0, color="black", ls="--", lw=1, label="duplication (σ = 1)")
    seen = {}
    for r in result["rows"]:
        if r["mechanism"] == "slim" and r.get("sigma"):
            seen.setdefault((r["nf"], r["size"]), []).append(r["sigma"])
    for (nf, size), sig in sorted(seen.items()):
        ax.axhline(sum(sig) / len(sig), ls=":", lw=1.2,
                   label=f"measured σ, {nf.upper()} {size} B: {sum(sig) / len(sig):.2f}")
    ax.set_xlim(0, 1000)
    ax.set_ylim(0, 3)
    ax.set_xlabel("link capacity in each direction (Mbit/s)")
    ax.set_ylabel("maximum statelet factor σ")
    ax.set_title(f"Fig. 3: a {SNAPSHOT_MB} MB snapshot at {FIG3_RATE_MBIT} Mbit/s of traffic", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / f"{_stem(result)}-fig3.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def _f(v, digits=3) -> str:
    return "-" if v is None else f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def _t(a: dict) -> str:
    """A point's migration duration (the median of the runs that finished, and how many did when
    some did not), or that none finished (rolled back)."""
    if not a:
        return "-"
    if not a["finished"]:
        return "did not finish"
    t = _f(a["duration_s"])
    return t if a["finished"] == a["runs"] else f"{t} ({a['finished']} of {a['runs']} finished)"


def table(result: dict) -> str:
    """Markdown: one line per (NF, size, rate), SLiM beside duplication, and the ratio of their
    durations and bytes (medians over the runs); the paper's claims in the header."""
    agg = summary(result["rows"])
    n = result.get("repeat", 1)
    runs = f"median of {n} runs each; " if n > 1 else ""
    j = result.get("joined_mbit")
    where = ("" if j is None else f" to a joined testbed's instance over a {j:g} Mbit/s link" if j
             else " to a joined testbed's instance over an unshaped link")
    lines = [f"SLiM vs duplication on nfx, {machine()}; {result.get('flows')} flows, all moved{where} under traffic, "
             f"order-preserving. Paper: SLiM takes about a third of duplication's time at high rates and under "
             f"1 s at 100 Mbit/s; duplication puts about 3x the statelets' bytes on the wire.", "",
             f"Migration: from the request until the destination has released everything it held, the "
             f"cleanup after it left out ({runs}max held, lost and RTT: the worst run).", "",
             "| NF | size | Mbit/s | pps reached | SLiM s | dup s | SLiM/dup time | SLiM bytes | dup bytes | "
             "SLiM/dup bytes | σ | max held ms (SLiM/dup) | lost (SLiM/dup) | s of RTT>15 ms (SLiM/dup) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    points = sorted({k[:3] for k in agg})
    for nf, size, mbit in points:
        s, d = agg.get((nf, size, mbit, "slim")) or {}, agg.get((nf, size, mbit, "dup")) or {}
        tr = s["duration_s"] / d["duration_s"] if s.get("duration_s") and d.get("duration_s") else None
        br = s["bytes_total"] / d["bytes_total"] if s.get("bytes_total") and d.get("bytes_total") else None
        reached = min((x["achieved_pps"] for x in (s, d) if x), default=None)
        lines.append(f"| {nf} | {size} | {mbit:g} | {_f(reached)} | {_t(s)} | {_t(d)} | {_f(tr, 2)} | {_f(s.get('bytes_total'))} | "
                     f"{_f(d.get('bytes_total'))} | {_f(br, 2)} | {_f(s.get('sigma'), 2)} | "
                     f"{_f(s.get('max_added_delay_ms'), 1)} / {_f(d.get('max_added_delay_ms'), 1)} | "
                     f"{_f(s.get('lost'))} / {_f(d.get('lost'))} | "
                     f"{_f(s.get('seconds_rtt_over_15ms'), 4)} / {_f(d.get('seconds_rtt_over_15ms'), 4)} |")
    lossy = [r for r in result["rows"] if r["lost"] or r.get("echo_lost")]
    if lossy:
        lines += ["", "Runs with a loss, beside the frames the testbeds' interfaces dropped in the same run (a "
                  "veth's peer backlog full: the receiving CPU behind, as a NIC drops past its ring; the link "
                  "between joined testbeds included):", ""]
        lines += [f"- {r['mechanism']} {r['nf']}, {r['size']} B at {r['rate_mbit']:g} Mbit/s"
                  + (f", {r['src']} -> {r['dst']}" if r.get("src") else "")
                  + f"{' (generator capped)' if r.get('capped') else ''}: lost {r['lost']:,} (echo {r.get('echo_lost') or 0:,})"
                  + (f", the interfaces dropped {r['path_drops']:,}" if "path_drops" in r else "")
                  + (" (did not finish)" if r.get("error") else "") for r in lossy]
    stops = [b for b in result.get("baselines", []) if b["lost"] or b["achieved_pps"] < 0.95 * b["rate_pps"]]
    if stops:
        lines += ["", "Where the sweep stopped (the same traffic with no move: what the machine itself loses):", ""]
        lines += [f"- {b['nf']}, {b['size']} B at {b['rate_mbit']:g} Mbit/s ({b['rate_pps']:,} pps, echoed): "
                  f"{b['achieved_pps']:,} pps sent, {b['lost']:,} lost" for b in stops]
    return "\n".join(lines) + "\n"
