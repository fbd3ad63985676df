"""The failover bench's markdown table and its PNG (matplotlib's Agg): the sink's packet rate
around the kill of the primary, one line a run, with the failure detection unit's verdict and
the sink's recovery marked."""
from pathlib import Path

from .sharp_plot import machine

TARGET_MS = 100


def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(r: dict) -> str:
    s = r["summary"]
    out = [f"# nfx bench failover ({r['nf']}, {r['rate_pps']:,} pps UDP over {r['flows']} flows, "
           f"iperf3 TCP -b {r['tcp_bitrate']}, S_batch {r['batch']}, heartbeat {r['heartbeat_ms']:g} ms x "
           f"{r['misses']} misses) on {machine()}", "",
           f"nf0 (primary) killed {r['kill_at_s']:g} s into {r['duration_s']:g} s of traffic: its agent SIGKILLed, "
           "then its XDP program detached (the kill window: between the two the program still forwards and "
           "counts, with no agent to share). Detection: the FDU's silence at its verdict (heartbeat or lease) "
           "/ SIGKILL to verdict; recovery: detach to the first packet the sink got again; control: the same "
           "UDP and TCP traffic just before, without a kill. Drift: what nf1 counted of each UDP flow short of "
           "what nf0 and nf1 forwarded (the sink's count); in parentheses the flows short by more than S_batch-1.", "",
           "| run | by | detection ms | kill window ms | promoted / steered ms | recovery ms | lost (control) | "
           f"{'NAT mappings' if r['nf'] == 'nat' else 'IDS flow entries'} lost | drift max (flows > S_batch-1) | TCP survived | TCP bytes sent / received | retransmits |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        out.append(f"| {x['run']} | {x['by']} | {_f(x['detection_ms'])} / {_f(x['detection_ms_kill_clock'])} | "
                   f"{_f(x.get('kill_window_ms'))} | {_f(x['promoted_ms'])} / {_f(x['steered_ms'])} | {_f(x['recovery_ms'])} | "
                   f"{x['lost']:,} ({_f(x.get('lost_control'), '{:,}')}) | "
                   f"{x['nat_mappings_lost']}/{x['nat_mappings']} UDP, {x['tcp_mappings_lost']}/{x['tcp_mappings']} TCP | "
                   f"{x['drift_max']} ({x['drift_over_batch']}) | {'yes' if x.get('tcp_survived') else 'NO'} | "
                   f"{_f(x.get('tcp_bytes_sent'), '{:,}')} / {_f(x.get('tcp_bytes_received'), '{:,}')} | "
                   f"{_f(x.get('tcp_retransmits'), '{}')} |")
    out += ["", f"Recovery: median {_f(s['recovery_ms_median'])} ms, max {_f(s['recovery_ms_max'])} ms "
                f"(target < {TARGET_MS} ms: {'met' if s['recovery_under_100ms'] else 'MISSED'}); "
                f"{'mappings' if r['nf'] == 'nat' else 'flow entries'} all kept: {'yes' if s['all_mappings_kept'] else 'NO'}; counters within S_batch-1: "
                f"{'yes' if s['drift_within_batch'] else 'NO'} (max {s['drift_max']}); "
                f"TCP survived every run: {'yes' if s['all_tcp_survived'] else 'NO'}."]
    for x in r["rows"]:
        if x.get("error"):
            out.append(f"\nRun {x['run']}: the failover did not complete: {x['error']}")
        if x["drift_over_batch"]:
            out.append(f"\nRun {x['run']}: {x['drift_over_batch']} flows short by more than S_batch-1 (shortfall: flows "
                       f"{x.get('drift_hist')}); when nf0 stopped they were this many packets past their last "
                       f"S_batch boundary: flows {x.get('past_boundary_at_kill')}, so that boundary's batch never "
                       "reached nf1.")
    return "\n".join(out) + "\n"


def plot(r: dict, d: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, x in enumerate(r["rows"]):
        c = colours[i % len(colours)]
        bins = x.get("rate_bins") or []
        ax.plot([b[0] for b in bins], [b[1] / 1e3 for b in bins], "-", color=c, lw=1,
                label=f"run {x['run']}: recovery {_f(x['recovery_ms'])} ms")
        if x.get("verdict_ms_after_detach") is not None:
            ax.axvline(x["verdict_ms_after_detach"], color=c, ls=":", lw=1)
        if x.get("recovery_ms") is not None:
            ax.axvline(x["recovery_ms"], color=c, ls="--", lw=1)
    ax.axvline(0, color="black", lw=1.2)
    ax.text(2, ax.get_ylim()[1] * 0.95, "kill", va="top")
    ax.set_xlim(-200, 400)
    ax.set_xlabel("ms from the kill (nf0's program detached); dotted: FDU verdict, dashed: traffic back")
    ax.set_ylabel("packets/s at the sink (thousands, 5 ms bins)")
    ax.set_title(f"{r['nf'].upper()} failover under {r['rate_pps']:,} pps + iperf3 TCP: the sink's rate")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    p = d / ("failover.png" if r["nf"] == "nat" else f"failover-{r['nf']}.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]
