"""`nfx bench cluster`: the cluster slides' figures (nfx/bench/cluster.py)."""
import typer

from ..bench import cluster, cluster_plot, queues, queues_plot
from ..bench.move_cells import split
from ..errors import BadInput
from ..testbed.topology import check_queues
from .common import JsonOpt, need_root, out, progress, write_bench, write_files


def cluster_(nf: str = typer.Option("nat", "--nf", help="NF kind of the 12 instances: nat or ids."),
             batches: str = typer.Option(",".join(map(str, cluster.BATCHES)), "--batches",
                                         help="S_batch values, packets (comma-separated)."),
             rates: str = typer.Option(",".join(map(str, cluster.RATES)), "--rates",
                                       help="Offered packet rates for throughput against rate (comma-separated)."),
             flows: int = typer.Option(cluster.FLOWS, "--flows", "-f", help="Flows, spread over the 12 instances."),
             duration: float = typer.Option(cluster.DURATION, "--duration", help="Seconds of traffic a point."),
             plot_dir: str = typer.Option("bench/results", "--plot", help="Where the PNGs, the table and the raw rows go."),
             queue_counts: str = typer.Option(None, "--queues",
                                              help="Also latency and throughput against these queue counts "
                                                   "(comma-separated; nfx bench queues with its defaults, this --nf): "
                                                   "queues.png, queues.md, queues.json."),
             json_: bool = JsonOpt):
    """Throughput against S_batch and against packet rate (3 clusters of 4 vs 1 cluster of 12 vs no
    sharing), and the migration overhead inside vs across clusters, on a 12-instance testbed of its
    own. Writes cluster-batch.png, cluster-rate.png, cluster-migration.png, cluster.md and cluster.json."""
    need_root()
    if nf not in ("nat", "ids"):
        raise BadInput(f"--nf is nat or ids, not {nf!r}")
    bs, rs = split(batches, int), split(rates, int)
    if not bs or any(b < 1 for b in bs) or not rs or any(r < 1 for r in rs) or flows < 12 or duration <= 0:
        raise BadInput("--batches and --rates are positive integers, --flows at least 12, --duration above 0")
    if cluster.SLIDES_BATCH not in bs:
        bs = sorted(set(bs) | {cluster.SLIDES_BATCH})     # the rate sweep and the moves run at the slides' S_batch
    qs = split(queue_counts, int) if queue_counts else []
    for q in qs:
        check_queues(q)
    r = cluster.run(nf, bs, rs, flows, duration, progress=progress)
    if qs:
        # the slides' multithreading figures, written beside the cluster's (and in its JSON)
        r["queues"] = queues.run((nf,), qs, progress=progress)
        write_files(plot_dir, "queues", r["queues"], queues_plot.table, queues_plot.plot)
        if not json_:
            out.print(queues_plot.table(r["queues"]))
    write_bench(plot_dir, "cluster", r, cluster_plot.table, cluster_plot.plot, json_)
