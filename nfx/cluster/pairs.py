"""Primary/secondary pairs and spares (issue 14) as `nfx cluster up --pairs --spares` gives
them, and failover's defaults. They are checked against the clusters by the topology's
check_pairs: a secondary holds its primary's state through the cluster's batched sharing, so
the two are members of one cluster; a spare is in no pair (it becomes a secondary once its
pair's primary failed over). The failure detection unit runs in the controller
(nfx/control/failover.py)."""
from ..errors import BadInput

DEFAULT_HEARTBEAT_MS = 10.0
DEFAULT_MISSES = 3
DEFAULT_TTL_S = 2
# a pair's batches go out as soon as the sharer reads them (not every 5 ms): a batch still on its
# way when the primary dies is one more batch its secondary's counters miss
PAIR_SEND_MS = 0.0


def parse_pairs(text: str) -> dict[str, str]:
    """'nf0=nf1,nf2=nf3' -> {primary: secondary}."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        p, eq, s = part.partition("=")
        if not eq or not p.strip() or not s.strip():
            raise BadInput(f"--pairs {text!r}: give primary=secondary pairs, e.g. nf0=nf1,nf2=nf3")
        out[p.strip()] = s.strip()
    if not out:
        raise BadInput("--pairs is empty: give primary=secondary pairs, e.g. nf0=nf1")
    return out


def parse_spares(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]
