"""The SHarP bench's figures (PNG, matplotlib's Agg) and its markdown table, with the paper's
published figures beside nfx's where the paper gives them (seeds/sharp-handover.txt, IV-B)."""
import os
import platform
from pathlib import Path

# what the paper reports in words (its plots carry no table): the maximum added delay levels off
# near 27 ms as the rate grows (Fig. 5b), the controller buffers about 5x less than the VNF
# (Fig. 5c/d), and SHarP's controller buffer stays flat as the state transfer grows (Fig. 7c)
PAPER = {"max_delay_ms": 27.0, "ctrl_vs_vnf": 5.0}
PANELS = [("handover_s", "handover duration (s)"), ("max_delay_ms", "max added delay (ms)"),
          ("controller_buffer_peak", "controller buffer peak (packets)"),
          ("instance_buffer_peak", "instance buffer peak (packets)")]


def machine() -> str:
    return f"{platform.node() or 'host'}: Linux {platform.release()}, {os.cpu_count()} vCPU"


def plot(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for fig_name, x_key, x_label, note in (
            ("fig5", "rate_pps", "packets per second (one UDP flow)", "state transfer: nfx's push, not slowed"),
            ("fig7", "state_delay_ms", "added state-transfer duration (ms)",
             "emulated: the sources (SHarP) / the controller (OpenNF) wait that long before moving the state")):
        rows = [s for s in result["summary"] if s["fig"] == fig_name]
        if not rows:
            continue
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        for ax, (key, label) in zip(axes.flat, PANELS):
            for mech, style in (("sharp", "o-"), ("opennf", "s--")):
                pts = sorted((s[x_key], s[key], s.get(key + "_ci") or 0) for s in rows
                             if s["mechanism"] == mech and s[key] is not None)
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style,
                                capsize=3, label=f"nfx {'SHarP' if mech == 'sharp' else 'OpenNF (op)'}")
            if key == "max_delay_ms" and fig_name == "fig5":
                ax.axhline(PAPER["max_delay_ms"], color="grey", ls=":", label="paper: levels off near 27 ms")
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"SHarP vs OpenNF on nfx ({fig_name}; {result.get('packet_size', 1000)}-byte packets, "
                     f"{result.get('repeat')} runs per point, 95% CI)\n{machine()}; {note}", fontsize=9)
        fig.tight_layout()
        p = out_dir / f"sharp-{fig_name}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    return made


def _fmt(v, ci=None, digits=1) -> str:
    if v is None:
        return "-"
    s = f"{v:,.{digits}f}"
    return s + (f" ± {ci:,.{digits}f}" if ci else "")


def table(result: dict) -> str:
    """Markdown: one line per point, SHarP beside OpenNF, the paper's claims in the header."""
    lines = [f"SHarP vs OpenNF (op) on nfx, {machine()}; {result.get('repeat')} runs per point, mean ± 95% CI. "
             f"Paper (Sec. IV-B): max added delay levels off near {PAPER['max_delay_ms']:g} ms; the controller "
             f"buffers ~{PAPER['ctrl_vs_vnf']:g}x less than the VNF; SHarP's controller buffer is flat in the "
             "state-transfer duration.", "",
             "| fig | point | mechanism | handover (s) | max delay (ms) | ctrl buffer | instance buffer | "
             "ctrl_buff / sw_buff | lost | reordered | dup |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        point = f"{s['rate_pps']} pps" if s["fig"] == "fig5" else f"+{s['state_delay_ms']:g} ms"
        split = (f"{_fmt(s.get('ctrl_buff_peak'), digits=0)} / {_fmt(s.get('sw_buff_peak'), digits=0)}"
                 if s["mechanism"] == "sharp" else "-")
        lines.append(f"| {s['fig']} | {point} | {s['mechanism']} | {_fmt(s['handover_s'], s['handover_s_ci'], 3)} | "
                     f"{_fmt(s['max_delay_ms'], s['max_delay_ms_ci'])} | "
                     f"{_fmt(s['controller_buffer_peak'], s['controller_buffer_peak_ci'], 0)} | "
                     f"{_fmt(s['instance_buffer_peak'], s['instance_buffer_peak_ci'], 0)} | {split} | "
                     f"{_fmt(s['lost'], digits=0)} | {_fmt(s['reordered'], digits=0)} | {_fmt(s['duplicated'], digits=0)} |")
    return "\n".join(lines) + "\n"
