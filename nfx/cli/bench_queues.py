"""`nfx bench queues`: throughput and latency against the number of queues (nfx/bench/queues.py)."""
import typer

from ..bench import queues, queues_plot
from ..bench.move_cells import split
from ..errors import BadInput
from ..testbed.topology import check_queues
from .common import JsonOpt, need_root, progress, write_bench


def queues_(nfs: str = typer.Option("nat,ids", "--nf", help="NF kinds (comma-separated): nat, ids."),
            queue_counts: str = typer.Option(",".join(map(str, queues.QUEUES)), "--queues", "-q",
                                             help="Queue counts a veth (comma-separated), 1-16."),
            lat_rates: str = typer.Option(",".join(map(str, queues.LAT_RATES)), "--lat-rates",
                                          help="Offered pps of the latency points (comma-separated)."),
            napi: str = typer.Option(",".join(queues.NAPI), "--napi",
                                     help="softirq (the default NAPI), threaded (NAPI threads), or both."),
            flows: int = typer.Option(queues.FLOWS, "--flows", "-f", help="Flows, split over the senders."),
            duration: float = typer.Option(queues.DURATION, "--duration", "-d", help="Seconds of traffic a run."),
            reps: int = typer.Option(queues.REPS, "--reps", help="Runs a point (median reported)."),
            senders: int = typer.Option(None, "--senders",
                                        help="Generator threads, pinned to CPUs 0..N-1 (default: every CPU)."),
            plot_dir: str = typer.Option("bench/results", "--plot", help="Where queues.png, .md and .json go."),
            json_: bool = JsonOpt):
    """Throughput (flat out, sink-counted) and latency (p50/p99 at fixed rates) of an XDP NF whose veths
    have N queues, one chain testbed per NF and queue count; where the work ran (per CPU, per rx queue)."""
    need_root()
    kinds, qs, rates, modes = split(nfs, str), split(queue_counts, int), split(lat_rates, int), split(napi, str)
    if not kinds or set(kinds) - {"nat", "ids"}:
        raise BadInput(f"--nf is nat, ids or both, not {nfs!r}")
    if not qs:
        raise BadInput("--queues needs at least one queue count")
    for q in qs:
        check_queues(q)
    if any(r < 1 for r in rates) or not modes or set(modes) - set(queues.NAPI):
        raise BadInput("--lat-rates are positive integers; --napi is softirq, threaded or both")
    if flows < 1 or duration <= 0 or reps < 1:
        raise BadInput("--flows and --reps are at least 1, --duration above 0")
    r = queues.run(kinds, qs, rates, modes, flows, duration, reps, senders, progress=progress)
    write_bench(plot_dir, "queues", r, queues_plot.table, queues_plot.plot, json_)
