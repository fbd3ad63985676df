"""The queues bench's figure (queues.png: throughput and latency against the number of queues)
and its markdown table, beside what the slides report for threads."""
from pathlib import Path

from .sharp_plot import machine

SLIDES = ("Slides (multithreading, 1 NF, 100 pkt/s, S_batch 30): \"latency decreases as the number of threads "
          "increases\" and \"throughput increases as the number of threads increases\"; a thread there is an rx "
          "queue here, each with its own NAPI on the CPU whose frames fill it (their figures' values are not in "
          "the text we have).")


def _rows(r, sweep, nf=None, napi=None, rate=None, senders="all"):
    """senders "all": the rows fed by every sender (the sweep); an int: by that many; None: any."""
    want = r["senders"] if senders == "all" else senders
    return [x for x in r["rows"] if x["sweep"] == sweep and (nf is None or x["nf"] == nf)
            and (napi is None or x["napi"] == napi) and (rate is None or x["offered_pps"] == rate)
            and (want is None or x.get("senders", r["senders"]) == want)]


def _us(v):
    return "-" if v is None else f"{v:.1f}"


def _share(x):
    return " / ".join(f"{s:.0%}" for s in x["nf_cpu_share"])


def findings(r: dict) -> list[str]:
    """What the kernel does, with this run's numbers where they show it."""
    out = ["## What the kernel does (Linux 6.18, veth)", "",
           "- A frame redirected into a veth (XDP_REDIRECT, `ndo_xdp_xmit`) lands in rx queue "
           "`sending CPU % queues`. Each rx queue has its own NAPI, scheduled on the CPU that filled it, so "
           "without NAPI threads an XDP NF runs in the sender's softirq, on the sender's CPU (run to completion).",
           "- An skb sent into a veth (a tc switch's redirect) takes the rx queue of the tx queue it leaves on, "
           "which the kernel picks by XPS, else by flow hash: then the next NAPI may run on another CPU than "
           "the last hop's, and a flow gets two queues further on (reordered). Testbeds with N queues set XPS "
           "on the switches' ports (CPU c → queue c % N), so a flow stays on its CPU through the switches too "
           "(tests/netns/test_queues_netns.py, sharp with 2 queues: 0 lost, 0 reordered; it fails without XPS).",
           "- So one sender feeds one queue whatever the count: the generator sends from one pinned thread per "
           f"CPU ({r['senders']} here), each with its own block of the flows (bpf/gen.bpf.c), so each flow keeps "
           "one queue, one NAPI, at every hop (no reordering; the sink's one-writer-per-flow rule holds).",
           "- With 1 queue and several senders, all of them push into one 256-slot ring that one NAPI drains at a "
           "time: the NF's work still shows on every CPU (the NAPI runs where it was last scheduled) but never "
           "two at once, and the ring overflows (lost).",
           f"- This machine has {r['cpus']} vCPUs: 1 and 2 queues are the measurable range; 4 queues on 2 CPUs "
           "only ever fill queues 0 and 1 (see frames per rx queue) and gain nothing."]
    tp = {(x["nf"], x["napi"], x["queues"]): x for x in _rows(r, "throughput")}
    one = {x["nf"]: x for x in _rows(r, "throughput", napi="softirq", senders=1) if x["queues"] == 1}
    for nf in r["nfs"]:
        a, b, c = tp.get((nf, "softirq", 1)), tp.get((nf, "softirq", 2)), one.get(nf)
        if a and b and a["throughput_pps"]:
            out.append(f"- {nf.upper()}: 2 queues forward {b['throughput_pps'] / a['throughput_pps']:.2f}x what 1 queue "
                       f"does under the same {r['senders']} senders ({b['throughput_pps']:,} vs {a['throughput_pps']:,} "
                       "pps)" + (f", {b['throughput_pps'] / c['throughput_pps']:.2f}x what 1 queue takes from 1 sender "
                                 f"({c['throughput_pps']:,} pps, nothing lost)" if c and c["throughput_pps"] else "") + ".")
    th = [(x, tp.get((x["nf"], "softirq", x["queues"]))) for x in _rows(r, "throughput", napi="threaded")]
    if th:
        worse = all(s and t["throughput_pps"] < s["throughput_pps"] for t, s in th)
        out.append("- NAPI threads (`/sys/class/net/<dev>/threaded`) are not needed to spread the work"
                   + (" and hurt here (rows `threaded`): each batch waits for a thread wake-up (compare p50 at the "
                      "lowest rate), and at high rates the threads cannot run while the senders hold both CPUs in "
                      "their test runs, so the 256-slot rings overflow." if worse else
                      ": compare the `threaded` rows."))
    return out


def table(r: dict) -> str:
    out = [f"# nfx bench queues on {machine()}", "",
           f"Chain testbed (h1 → nf0 → h2), every data-plane veth with N rx and N tx queues; {r['flows']} flows "
           f"from {r['senders']} pinned senders (one per CPU) in every point; {r['duration_s']} s a run, median of "
           f"{r['reps']}.", "", SLIDES, "",
           "## Throughput against queues (every sender flat out; the sink's count)", "",
           "| NF | NAPI | queues | senders | offered pps | throughput pps | lost | NF work per CPU | frames per rx queue |",
           "|---|---|---|---|---|---|---|---|---|"]
    for x in _rows(r, "throughput", senders=None):
        out.append(f"| {x['nf']} | {x['napi']} | {x['queues']} | {x.get('senders', r['senders'])} | {x['sent_pps']:,} | **{x['throughput_pps']:,}** | "
                   f"{x['lost']:,} | {_share(x)} | {' / '.join(f'{n:,}' for n in x['nf_rx_queues'])} |")
    out += ["", "## Latency against queues (fixed offered rates; the sink's one-way delay)", "",
            "| NF | NAPI | queues | senders | offered pps | throughput pps | lost | p50 µs | p99 µs | NF work per CPU |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for x in _rows(r, "latency", senders=None):
        out.append(f"| {x['nf']} | {x['napi']} | {x['queues']} | {x.get('senders', r['senders'])} | {x['offered_pps']:,} | {x['throughput_pps']:,} | "
                   f"{x['lost']:,} | {_us(x['lat_p50_us'])} | {_us(x['lat_p99_us'])} | {_share(x)} |")
    out += [""] + findings(r)
    return "\n".join(out) + "\n"


def plot(r: dict, d: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    top = max(r["lat_rates"]) if r["lat_rates"] else None
    for nf, colour in zip(r["nfs"], ("tab:blue", "tab:orange")):
        for napi, style in (("softirq", "o-"), ("threaded", "x:")):
            xs = _rows(r, "throughput", nf, napi)
            if xs:
                a1.plot([x["queues"] for x in xs], [x["throughput_pps"] / 1e6 for x in xs], style, color=colour,
                        label=f"{nf.upper()} ({napi} NAPI)")
            solo = [x for x in _rows(r, "throughput", nf, napi, senders=1) if x["queues"] == 1]
            if solo and napi == "softirq":
                a1.plot([1], [solo[0]["throughput_pps"] / 1e6], "D", color=colour, mfc="none",
                        label=f"{nf.upper()}, 1 queue, 1 sender")
            ls = _rows(r, "latency", nf, napi, top)
            if ls and napi == "softirq":
                a2.plot([x["queues"] for x in ls], [x["lat_p50_us"] for x in ls], "o-", color=colour,
                        label=f"{nf.upper()} p50")
                a2.plot([x["queues"] for x in ls], [x["lat_p99_us"] for x in ls], "s--", color=colour,
                        label=f"{nf.upper()} p99")
    for ax in (a1, a2):
        ax.set_xlabel("queues a veth (rx = tx)")
        ax.set_xticks(r["queues"])
        ax.axvline(r["cpus"], color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    a1.set_ylabel("throughput (Mpps at the sink)")
    a1.set_title(f"throughput against queues ({r['senders']} senders flat out)", fontsize=10)
    a2.set_ylabel("one-way delay (µs)")
    a2.set_yscale("log")
    a2.set_title(f"latency against queues at {top:,} pps offered" if top else "latency", fontsize=10)
    fig.suptitle(f"XDP NF with multi-queue veths, {r['cpus']} vCPUs (dotted line: queues = CPUs)", fontsize=10)
    fig.tight_layout()
    path = d / "queues.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
