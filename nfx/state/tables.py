"""Which maps of each NF hold state, in OpenNF's three scopes, and how a filter selects entries:
per-flow tables by their flow key (or, for a connection's other direction, by the flow key at
the start of the value), multi-flow tables by host address or owning flow, all-flows whole. An instance's own verdict counters (nfx_stats) are not NF state and stay."""
from dataclasses import dataclass

from .. import layout as L
from ..errors import BadInput

SCOPES = ("per-flow", "multi-flow", "all-flows")


@dataclass(frozen=True)
class Table:
    name: str
    scope: str
    key: type
    value: type
    select: str          # key_flow | value_flow | key_host | all


TABLES = {
    "nat": [
        Table("nat_fwd", "per-flow", L.FlowKey, L.NatEntry, "key_flow"),
        Table("nat_rev", "per-flow", L.FlowKey, L.NatEntry, "value_flow"),   # found by its inside twin
        Table("nat_ports", "multi-flow", L.NatPort, L.FlowKey, "value_flow"),
        Table("nat_cursor", "all-flows", L.u32, L.u64, "all"),     # the port allocator's position
    ],
    "ids": [
        Table("ids_flows", "per-flow", L.FlowKey, L.IdsFlow, "key_flow"),
        Table("ids_hosts", "multi-flow", L.u32, L.IdsHost, "key_host"),
        Table("ids_hostports", "multi-flow", L.IdsHostPort, L.u8, "key_host"),
        Table("ids_global", "all-flows", L.u32, L.u64, "all"),
        Table("ids_sig_hits", "all-flows", L.u32, L.u64, "all"),
    ],
}


def tables(kind: str, scopes=SCOPES) -> list[Table]:
    if kind not in TABLES:
        raise BadInput(f"no state tables for NF kind {kind!r}")
    bad = set(scopes) - set(SCOPES)
    if bad:
        raise BadInput(f"unknown scope {sorted(bad)}: scopes are {', '.join(SCOPES)}")
    return [t for t in TABLES[kind] if t.scope in scopes]


def parse_scopes(text: str | None) -> tuple[str, ...]:
    if not text or text == "all":
        return SCOPES
    out = tuple(s.strip() for s in text.split(",") if s.strip())
    tables("nat", out)     # validates names
    return out
