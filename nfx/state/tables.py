"""Which maps of each NF hold state, in OpenNF's three scopes, and how a filter selects entries:
per-flow tables by their flow key (or, for a connection's other direction, by the flow key at
the start of the value), multi-flow tables by host address or owning flow, all-flows whole. An instance's own verdict counters (nfx_stats) are not NF state and stay."""
from dataclasses import dataclass

from ..errors import BadInput
from ..loader.spec import MapSpec
from ..nfs.ids import IDS_MAPS
from ..nfs.nat import NAT_MAPS

SCOPES = ("per-flow", "multi-flow", "all-flows")


@dataclass(frozen=True)
class Table:
    spec: MapSpec        # the map, as its program declares it
    scope: str
    select: str          # key_flow | value_flow | key_host | all

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> type:
        return self.spec.key

    @property
    def value(self) -> type:
        return self.spec.value


TABLES = {
    "nat": [
        Table(NAT_MAPS.nat_fwd, "per-flow", "key_flow"),
        Table(NAT_MAPS.nat_rev, "per-flow", "value_flow"),         # found by its inside twin
        Table(NAT_MAPS.nat_ports, "multi-flow", "value_flow"),
        Table(NAT_MAPS.nat_cursor, "all-flows", "all"),            # the port allocator's position
    ],
    "ids": [
        Table(IDS_MAPS.ids_flows, "per-flow", "key_flow"),
        Table(IDS_MAPS.ids_hosts, "multi-flow", "key_host"),
        Table(IDS_MAPS.ids_hostports, "multi-flow", "key_host"),
        Table(IDS_MAPS.ids_global, "all-flows", "all"),
        Table(IDS_MAPS.ids_sig_hits, "all-flows", "all"),
    ],
}


def tables(kind: str, scopes=SCOPES) -> list[Table]:
    if kind not in TABLES:
        raise BadInput(f"no state tables for NF kind {kind!r}")
    bad = set(scopes) - set(SCOPES)
    if bad:
        raise BadInput(f"unknown scope {sorted(bad)}: scopes are {', '.join(SCOPES)}")
    return [t for t in TABLES[kind] if t.scope in scopes]


def table(kind: str, name: str) -> Table | None:
    """The state table `name` of NF kind `kind`, or None if it has none of that name."""
    return next((t for t in tables(kind) if t.name == name), None)


def parse_scopes(text: str | None) -> tuple[str, ...]:
    if not text or text == "all":
        return SCOPES
    out = tuple(s.strip() for s in text.split(",") if s.strip())
    tables("nat", out)     # validates names
    return out
