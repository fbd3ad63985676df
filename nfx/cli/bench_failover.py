"""`nfx bench failover`: a primary killed under UDP and TCP traffic (nfx/bench/failover.py)."""
import re

import typer

from ..bench import failover, failover_plot
from ..errors import BadInput
from .common import JsonOpt, need_root, progress, write_bench


def failover_(nf: str = typer.Option("nat", "--nf", help="NF kind of the 3 instances: nat (mappings) or ids (flow counters)."),
              runs: int = typer.Option(5, "--runs", help="Kills, each on a fresh testbed of netns/pair.json."),
              rate: int = typer.Option(failover.RATE, "--rate", help="UDP packets/s offered through the NAT."),
              flows: int = typer.Option(failover.FLOWS, "--flows", "-f", help="UDP flows (one NAT mapping each)."),
              batch: int = typer.Option(30, "--batch", help="S_batch: packets of a flow per batch shared with the secondary."),
              heartbeat_ms: float = typer.Option(10.0, "--heartbeat-ms", help="Agents' heartbeat period to the FDU."),
              misses: int = typer.Option(3, "--misses", help="Heartbeats missed before the FDU fails a primary over."),
              tcp_bitrate: str = typer.Option(failover.TCP_BITRATE, "--tcp-bitrate",
                                              help="iperf3 -b of the TCP stream through the NAT (e.g. 50M)."),
              plot_dir: str = typer.Option("bench/results", "--plot", help="Where failover.png, .md and .json go."),
              json_: bool = JsonOpt):
    """Kill -9 the primary NAT's agent and detach its program under UDP traffic and an iperf3 TCP stream:
    detection and recovery time, packets lost, NAT mappings lost, counter drift, whether TCP survived.
    Writes failover.png (the sink's rate around the kill), failover.md and failover.json (--nf ids:
    failover-ids.*)."""
    need_root()
    if nf not in ("nat", "ids"):
        raise BadInput(f"--nf is nat or ids, not {nf!r}")
    if runs < 1 or rate < 1000 or flows < 1 or flows > 60_000:
        raise BadInput(f"--runs is at least 1, --rate at least 1000 pps, --flows 1..60000 "
                       f"(got {runs}, {rate}, {flows})")
    if batch < 1 or not 1 <= heartbeat_ms <= 10_000 or not 1 <= misses <= 1000:
        raise BadInput(f"--batch is at least 1, --heartbeat-ms 1..10000, --misses 1..1000 "
                       f"(got {batch}, {heartbeat_ms:g}, {misses})")
    if not re.fullmatch(r"[1-9]\d*(\.\d+)?[KMG]?", tcp_bitrate):
        raise BadInput(f"--tcp-bitrate is iperf3's -b, a positive number with K, M or G, not {tcp_bitrate!r}")
    r = failover.run(runs, rate, flows, nf, batch, heartbeat_ms, misses, tcp_bitrate, progress=progress)
    write_bench(plot_dir, "failover" if nf == "nat" else f"failover-{nf}", r, failover_plot.table, failover_plot.plot, json_)
