"""An open NF instance's commutative all-flows counters, read through the state export (the same
chunks a move sends) and published to the testbed's global state, where merged_counters() sums them."""
from .. import layout as L
from ..etcd import Etcd
from ..state import ops
from ..etcd.globalstate import GlobalState

# all-flows tables that hold counters (summing them over instances means something); NAT's
# nat_cursor is an allocator position, not a counter
COUNTER_TABLES = {"ids": ("ids_global", "ids_sig_hits")}


def _names(nf, table: str) -> dict[int, str]:
    """Slot -> the name a counter is merged under: ids_global by counter name, ids_sig_hits by
    signature id (a slot's signature may differ between instances; its id does not)."""
    if table == "ids_global":
        return {int(g): g.name.lower() for g in L.IdsGlobal}
    if table == "ids_sig_hits":
        return {s.slot: str(s.id) for s in nf.signatures()}
    return {}


def instance_counters(nf) -> dict[str, dict[str, int]]:
    """{table: {name: value}} of the instance's counter tables (per-CPU values summed); empty for an
    NF kind without any."""
    want = COUNTER_TABLES.get(nf.kind, ())
    names = {t: _names(nf, t) for t in want}
    out: dict[str, dict[str, int]] = {t: {} for t in want}
    for chunk in ops.export(nf, ("all-flows",)):
        if chunk.table not in want:
            continue
        for rec in ops.records(chunk):
            name = names[chunk.table].get(int(rec["key"]))
            if name is not None:                  # a slot no counter or installed signature uses
                out[chunk.table][name] = int(rec["value"])
    return out


def publish_instance_counters(etcd: Etcd | GlobalState, tb: str, instance_name: str, nf) -> dict[str, dict[str, int]]:
    """Publish the instance's counters in testbed `tb`'s global state under its name, one key per
    table; what was published."""
    gs = etcd if isinstance(etcd, GlobalState) else GlobalState(etcd, tb)
    got = instance_counters(nf)
    for table, counters in got.items():
        gs.publish_counters(instance_name, table, counters)
    return got
