"""Replay of statelets (nfx/state/statelets.py) onto a snapshot or onto another instance, and the
statelet factor (sigma) of an instance's counters.

Replay (`apply`) is exact and idempotent. Values are absolute and deletions explicit. Within one
incarnation of an entry (created_ns, first_ns) counters only grow, flags only gain bits, and
pkts orders the rest: a statelet older than the entry it lands on changes nothing, so a
snapshot taken at any point after mirroring began, plus every statelet in ring order, gives
back the live per-flow and multi-flow state byte for byte, and applying a stream twice is
harmless. An entry torn by a concurrent snapshot read is repaired by the statelets at or after
its pkts. Timestamps are exact while one entry's updates are serialised (a flow's packets reach
one RX queue); counters (e.g. an IDS host's, updated by many flows on many CPUs) are exact
either way.

    reader = StateletReader(nf)          # nf may be reopened from pins in another process
    nf.set_filter(0, <match-all filter, action STATELET>)
    snap = Tables.from_nf(nf)            # or list(ops.export(nf, ("per-flow", "multi-flow")))
    ... traffic ...
    report = apply(snap, reader.drain())
    ops.diff(snap.chunks(), ops.export(nf, ("per-flow", "multi-flow")))["same"]
"""
from .fastapply import apply_fast
from .replay_one import COUNTS, Tables, apply_slow
from .statelets import RINGBUF_HDR, lost

__all__ = ["COUNTS", "Tables", "apply", "apply_slow", "sigma"]


def apply(target, statelets, report: dict | None = None) -> dict:
    """Replay statelets, in order, onto `target`: a Tables snapshot, a list of chunks (turned into
    Tables; report["tables"] holds the result), or an NF instance (its maps, written at the end).
    `statelets`: ring records (bytes, as StateletReader.poll_raw/drain return them), a parsed
    stbatch.Batch (stbatch.poll_batch), dicts (poll), or Updates.

    Per entry: a statelet of another incarnation than the entry's is skipped (a whole one of a
    later incarnation replaces the entry); within an incarnation counters take the larger value,
    flag sets are ORed, and the other fields (timestamps) are taken from a statelet whose pkts is
    not below the entry's. That is exact when one entry's updates are serialised, and counters
    stay exact when they are not (each CPU reads the counter after its own add, so the last add's
    value is the largest any statelet carries). A partial statelet for an entry the target lacks
    is skipped: fine if the stream later deletes that incarnation, else an orphan.

    Returns counts: applied, stale (older than the entry it met), deleted, absent_deletes,
    orphans (partial statelets whose entry the target never had: the stream or the snapshot is
    incomplete), statelets, records, apply_s.

    The work is done in bulk by nfx/state/fastapply.py (one pass per table, entries coalesced);
    apply_slow is the statelet-by-statelet reference it is tested against."""
    return apply_fast(target, statelets, report)


# ---- accounting ------------------------------------------------------------------------------------
def sigma(src, before: dict | None = None) -> dict:
    """The statelet factor from an instance's counters (an NF, or a stats dict from NF.stats()),
    since `before` (an earlier stats dict) if given: statelet bytes / bytes of the packets they
    mirror (whole frames). ring_bytes adds the ring's 8-byte header per record."""
    s = src.stats() if hasattr(src, "stats") else dict(src)
    b = before or {}

    def d(k):
        return s.get(k, 0) - b.get(k, 0)

    recs, sb, pb = d("r_statelet"), d("r_statelet_bytes"), d("r_statelet_pkt_bytes")
    drops = lost(s) - lost(b)
    return {"records": recs, "statelet_bytes": sb, "packet_bytes": pb, "dropped": drops,
            "sigma": sb / pb if pb else 0.0, "ring_bytes": sb + RINGBUF_HDR * recs,
            "bytes_per_record": sb / recs if recs else 0.0}
