"""A testbed's clusters and their batched sharing, across the agents (issue 13): which instances
form which cluster, and each instance sharing its flows' deltas with the other members of its
own (nfx/agent/share.py). What runs is recorded in the testbed's registry record
(rec["sharing"]: S_batch and the clusters in force, which `--clusters` may set apart from the
topology's rec["clusters"]), where the controller reads it per move: a move between two sharing members of
one cluster carries only the last batch (nfx/migrate/opennf.py, dist.py)."""
from .. import registry
from ..agent.client import AgentClient
from ..errors import BadInput, NfxError

DEFAULT_BATCH = 30           # S_batch of the slides' runs
DEFAULT_IDLE_MS = 200


def parse_clusters(text: str, instances: list[str]) -> dict[str, list[str]]:
    """'nf0,nf1/nf2,nf3' -> {"c0": [nf0, nf1], "c1": [nf2, nf3]} (every name an instance, none twice)."""
    out = {f"c{i}": [n.strip() for n in part.split(",") if n.strip()]
           for i, part in enumerate(p for p in text.split("/") if p.strip())}
    if not out:
        raise BadInput("no clusters in --clusters: give them as nf0,nf1/nf2,nf3")
    check_clusters(out, instances)
    return out


MAX_BATCH = 1 << 20


def parse_batch(text, clusters: dict) -> dict[str, int]:
    """S_batch per cluster from --batch: 'N' (every cluster), 'c0=N,c1=M' (those clusters; the
    others DEFAULT_BATCH), or both ('30,c1=10': c1 10, the rest 30). An int is every cluster's."""
    if isinstance(text, int):
        text = str(text)
    default, out = DEFAULT_BATCH, {}
    for item in (i.strip() for i in str(text).split(",")):
        if not item:
            continue
        name, eq, value = item.rpartition("=")
        name = name.strip()
        if eq and name not in clusters:
            raise BadInput(f"--batch {item}: there is no cluster {name!r} ({', '.join(clusters) or 'none'})")
        try:
            n = int(value)
        except ValueError:
            raise BadInput(f"--batch {item}: S_batch is a whole number of packets, e.g. 30 or c0=30") from None
        if not 1 <= n <= MAX_BATCH:
            raise BadInput(f"--batch {item}: S_batch is 1..{MAX_BATCH} packets")
        if eq:
            out[name] = n
        else:
            default = n
    return {c: out.get(c, default) for c in clusters}


def check_clusters(clusters: dict, instances: list[str]) -> None:
    seen: set[str] = set()
    for c, ms in clusters.items():
        for m in ms:
            if m not in instances:
                raise BadInput(f"cluster {c}: {m!r} is not an instance of the testbed ({', '.join(instances)})")
            if m in seen:
                raise BadInput(f"{m} is in two clusters")
            seen.add(m)


def start(rec, clusters: dict[str, list[str]], batch: dict[str, int], idle_ms: float, etcd: str | None = None,
          ttl_s: int | None = None, send_ms: float | None = None) -> dict:
    """Every member of every cluster shares with the others of its own, every batch[cluster]
    packets of a flow; all or nothing."""
    if rec.get("sharing"):
        raise BadInput(f"testbed {rec['name']}'s clusters already share (nfx cluster down first)")
    check_clusters(clusters, nf_instances(rec))
    started, out = [], {}
    try:
        for c, ms in clusters.items():
            for m in ms:
                with AgentClient(rec["name"], m, timeout=30.0) as a:
                    extra = {"ttl_s": ttl_s} if ttl_s else {}     # failover: the lease is the backstop detector
                    if send_ms is not None:
                        extra["send_ms"] = send_ms
                    # the members as m's own testbed names them (nf0@A to an instance of B)
                    out[m] = a.request("share_start", members=[registry.as_seen_by(o, rec["name"], m) for o in ms if o != m],
                                       batch=batch[c], idle_ms=idle_ms,
                                       etcd=etcd, cluster=c if etcd else None, **extra)
                started.append(m)
    except BaseException:
        for m in started:
            try:
                with AgentClient(rec["name"], m, timeout=10.0) as a:
                    a.request("share_stop")
            except NfxError:
                pass
        raise
    rec["sharing"] = {"batch": batch, "idle_ms": idle_ms, "clusters": clusters, "send_ms": send_ms}
    rec.save()
    return out


def _each(rec, op: str) -> dict:
    """`op` at every member of the clusters in force: {instance: {cluster, ...its answer} or
    {cluster, error}}; an agent that does not answer is reported, not fatal."""
    out = {}
    for c, ms in rec.clusters_in_force().items():
        for m in ms:
            try:
                with AgentClient(rec["name"], m, timeout=10.0) as a:
                    out[m] = {"cluster": c, **a.request(op)}
            except NfxError as e:
                out[m] = {"cluster": c, "error": str(e)}
    return out


def stop(rec) -> dict:
    out = _each(rec, "share_stop")
    rec.pop("sharing", None)
    rec.save()
    return out


def status(rec) -> dict:
    return _each(rec, "share_status")


def nf_instances(rec) -> list[str]:
    """The testbed's instances, and the one a joined testbed lends it (nf1@B), which may be a
    cluster member and a secondary like its own."""
    return [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"] + rec.borrowed()
