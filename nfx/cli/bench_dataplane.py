"""`nfx bench dataplane`: pps through nf0 of a chain on every path, the XDP NFs as ratios to the
bare XDP forward and to nftables (nfx/bench/dataplane.py)."""
import os

import typer
from rich.table import Table

from ..bench import dataplane
from ..bench.move_cells import split
from ..errors import BadInput
from ..traffic.gen import min_size
from .common import JsonOpt, emit_json, need_root, out, progress, show

SMALLEST = min_size("udp")

LABELS = {"xdp_forward": "XDP bare forward", "xdp_nat": "XDP NAT", "xdp_ids": "XDP IDS",
          "nft_masquerade": "nftables masquerade", "kernel_forward": "kernel forwarding"}


def parse_sizes(size: int | None, sizes: str | None) -> list[int] | None:
    """--size N (the older single size) or --sizes A,B,...; neither: None (the smallest frame)."""
    if size is not None and sizes is not None:
        raise BadInput("give --size or --sizes, not both")
    if sizes is not None:
        found = split(sizes, int)
        if not found:
            raise BadInput("--sizes needs at least one frame size")
        return found
    return None if size is None else [size]


def pinned_cpu(pin: bool, pin_cpu: int | None) -> int | None:
    """The generator's CPU: --pin-cpu N, or with --pin alone the last CPU this process may use."""
    if pin_cpu is not None:
        return pin_cpu
    return max(os.sched_getaffinity(0)) if pin else None


def dataplane_(flows: int = typer.Option(1000, "--flows", "-f", help="Distinct flows."),
               duration: float = typer.Option(3.0, "--duration", "-d", help="Seconds per run."),
               size: int = typer.Option(None, "--size", "-s", help="One frame size (as --sizes N)."),
               sizes: str = typer.Option(None, "--sizes", help="Frame sizes in bytes without the FCS, comma-separated "
                                         f"(default: the smallest UDP frame the generator makes, {SMALLEST} B; "
                                         f"{dataplane.MIN_ETH_FRAME}-{SMALLEST - 1} are measured as {SMALLEST})."),
               reps: int = typer.Option(3, "--reps", help="Runs per path and size (median reported)."),
               pin: bool = typer.Option(False, "--pin", help="Run the traffic on one CPU (the last one this process may "
                                        "use): the loop's seeds or the sending thread, and with them the path's work, "
                                        "go there, so the rate is the path's cost per packet on one CPU."),
               pin_cpu: int = typer.Option(None, "--pin-cpu", help="Pin it to this CPU (implies --pin)."),
               traffic: str = typer.Option("loop", "--traffic", help="loop: the sink sends every packet back to "
                                           "the generator, which sends it again (XDP-born frames, no skb per "
                                           "packet, on any kernel). send: the generator sends each packet by "
                                           "test run (live frames, or an skb where the kernel refuses them)."),
               json_: bool = JsonOpt):
    """The bare XDP forward, the XDP NAT, the XDP IDS, nftables masquerade and kernel forwarding on
    one chain testbed (h1 -> nf0 -> h2): pps at the sink, each NF as a ratio to the bare forward
    and to nftables, from the same run."""
    requested = parse_sizes(size, sizes)
    cpu = pinned_cpu(pin, pin_cpu)
    dataplane.frame_sizes(requested)              # bad input fails here, before anything is built
    dataplane.check_args(flows, duration, reps, cpu, traffic)
    need_root()
    r = dataplane.run(flows, duration, requested, reps, cpu, progress=(lambda m: None) if json_ else progress,
                      traffic=traffic)
    if json_:
        emit_json(r)
        return
    for block in r["sizes"]:
        _table(r, block)
    steal = f", the host stole {r['steal_pct']:g}% of the CPU time" if r.get("steal_pct") is not None else ""
    out.print(f"[dim]load average {r['loadavg_1m']:.1f} at the start{steal}; the CPUs are shared, so compare "
              f"paths within one run (the ratios), not across runs; {_how_sent(r)} on {r['kernel']}[/dim]")


def _how_sent(r: dict) -> str:
    if r["traffic"] == "loop":
        return "the frames went round a loop (the sink sent each back to the generator)"
    return f"the generator sent by {r['transport']} test runs"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _table(r: dict, block: dict) -> None:
    asked = block["requested_bytes"]
    note = f" (asked {asked} B)" if asked and asked != block["frame_bytes"] else ""
    pinned = f", generator on CPU {r['pin_cpu']}" if r["pin_cpu"] is not None else ""
    t = Table(title=f"dataplane: {r['topology']}, {r['flows']:,} flows, {block['frame_bytes']} B frames{note}, "
                    f"{r['duration_s']:g} s × {r['reps']}{pinned}")
    for c, j in (("path", "left"), ("Mpps", "right"), ("runs", "right"), ("lost", "right"),
                 ("/ forward", "right"), ("/ nftables", "right")):
        t.add_column(c, justify=j)
    res = block["results"]
    fwd, nft = res["xdp_forward"]["rx_pps_median"], res["nft_masquerade"]["rx_pps_median"]
    for path, s in res.items():
        t.add_row(LABELS.get(path, path), f"{s['rx_pps_median'] / 1e6:.3f}",
                  " ".join(f"{x / 1e6:.2f}" for x in s["rx_pps_runs"]), " ".join(f"{x:,}" for x in s["lost_runs"]),
                  _x(dataplane.ratio(s["rx_pps_median"], fwd)), _x(dataplane.ratio(s["rx_pps_median"], nft)))
    show(t)
    out.print(f"XDP NAT / bare forward [bold]{_x(block['ratio_nat_over_xdp_forward'])}[/bold], "
              f"/ nftables [bold]{_x(block['ratio_xdp_over_nft'])}[/bold];   "
              f"XDP IDS / bare forward [bold]{_x(block['ratio_ids_over_xdp_forward'])}[/bold], "
              f"/ nftables {_x(block['ratio_ids_over_nft'])}\n")
