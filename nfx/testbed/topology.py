"""Topology files (netns/*.json): nodes by role, links, the addressing plan, and optionally
clusters of NF instances and whether the switches spread flows over the instances. `nf{i}` in a
node, link or cluster member name stands for every NF instance 0..N-1."""
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import layout as L
from ..errors import BadInput, NotFound
from ..paths import TOPOLOGY_DIR

ROLES = {"host", "switch", "nf"}
MAX_INSTANCES = L.TX_SLOTS - 2      # tx devmap slots 0 and 1 are the sides, the rest one per peer
MAX_QUEUES = 16                     # rx and tx queues of every data-plane veth (one NAPI per rx queue)


@dataclass
class Topology:
    name: str
    about: str
    nodes: dict[str, dict]           # expanded node name -> spec
    links: list[tuple[str, str]]     # expanded, in file order
    inside: str
    pool: str
    mgmt: str
    instances: int
    source: str = ""
    extra: dict = field(default_factory=dict)
    clusters: dict[str, list[str]] = field(default_factory=dict)   # cluster -> its NF instances
    spread: bool = False             # switches spread flows over the instances (builder's default plan)
    queues: int = 1                  # rx/tx queues of every veth that carries traffic (1: the kernel's default)
    pairs: dict[str, str] = field(default_factory=dict)   # primary -> secondary (nfx cluster up's failover)
    spares: list[str] = field(default_factory=list)       # instances that stand by for a pair

    def role(self, role: str) -> list[str]:
        return [n for n, spec in self.nodes.items() if spec["role"] == role]

    def neighbours(self, node: str) -> list[str]:
        """In link order: for an NF, the first is its inside side, the second its outside."""
        out = []
        for a, b in self.links:
            if a == node:
                out.append(b)
            elif b == node:
                out.append(a)
        return out


def available() -> list[str]:
    return sorted(p.stem for p in TOPOLOGY_DIR.glob("*.json"))


def load(name_or_file: str, instances: int | None = None, queues: int | None = None,
         mgmt: str | None = None) -> Topology:
    """`instances`, `queues` and `mgmt` (the management network), when given, override the file's."""
    path = Path(name_or_file)
    if not path.suffix:
        path = TOPOLOGY_DIR / f"{name_or_file}.json"
    if not path.exists():
        raise NotFound(f"no topology {name_or_file!r}", hint=f"available: {', '.join(available())}, or a path to a .json file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: not valid JSON: {e}") from None
    n = instances if instances is not None else int(raw.get("instances", 1))
    if not 1 <= n <= MAX_INSTANCES:
        raise BadInput(f"instances must be 1..{MAX_INSTANCES} (tx devmap has slots for {MAX_INSTANCES} peers), got {n}")
    try:
        nodes: dict[str, dict] = {}
        for name, spec in raw["nodes"].items():
            if spec.get("role") not in ROLES:
                raise BadInput(f"{path}: node {name!r} has role {spec.get('role')!r}; roles are {sorted(ROLES)}")
            for expanded in _expand(name, n):
                nodes[expanded] = dict(spec)
        links = []
        for a, b in raw["links"]:
            if "{i}" in a and "{i}" in b:
                raise BadInput(f"{path}: link {a}-{b}: at most one end may be templated")
            for ea in _expand(a, n):
                for eb in _expand(b, n):
                    for end in (ea, eb):
                        if end not in nodes:
                            raise BadInput(f"{path}: link {a}-{b} names unknown node {end!r}")
                    links.append((ea, eb))
        topo = Topology(name=raw.get("name", path.stem), about=raw.get("about", ""), nodes=nodes, links=links,
                        inside=raw["inside"], pool=raw["pool"], mgmt=raw.get("mgmt", "10.255.0.0/24"),
                        instances=n, source=str(path))
    except KeyError as e:
        raise BadInput(f"{path}: missing field {e}") from None
    if not isinstance(raw.get("spread", False), bool):
        raise BadInput(f"{path}: spread is true or false, not {raw['spread']!r}")
    topo.spread = raw.get("spread", False)
    topo.queues = check_queues(queues) if queues is not None else check_queues(raw.get("queues", 1), path)
    for sw in topo.role("switch") if topo.spread else ():
        # the switch picks among all instances, in instance order (builder._spread)
        missing = [nf for nf in topo.role("nf") if nf not in topo.neighbours(sw)]
        if missing:
            raise BadInput(f"{path}: spread: switch {sw} has no link to {', '.join(missing)}; it needs one to every NF instance")
    topo.clusters = _clusters(path, raw.get("clusters", {}), topo)
    topo.mgmt = check_mgmt(mgmt if mgmt is not None else topo.mgmt, topo.instances, "--mgmt" if mgmt else path)
    pairs, spares = raw.get("pairs", {}), raw.get("spares", [])
    if not isinstance(pairs, dict) or not all(isinstance(v, str) for v in pairs.values()):
        raise BadInput(f"{path}: pairs maps a primary to its secondary, not {pairs!r}")
    if not isinstance(spares, list) or not all(isinstance(v, str) for v in spares):
        raise BadInput(f"{path}: spares is a list of NF instances, not {spares!r}")
    if pairs:
        check_pairs(pairs, spares, topo.clusters, topo.role("nf"), where=f"{path}: pairs")
    topo.pairs, topo.spares = dict(pairs), list(spares)
    for nf in topo.role("nf"):
        if len(topo.neighbours(nf)) != 2:
            raise BadInput(f"{path}: NF {nf} needs exactly two links (inside, outside)")
    for h in topo.role("host"):
        if len(topo.neighbours(h)) != 1:
            raise BadInput(f"{path}: host {h} needs exactly one link")
    return topo


def check_mgmt(net: str, instances: int, where: Path | str = "--mgmt") -> str:
    """The management network: IPv4, room for the controller and an agent an instance (they
    start at its 11th address), and private: two joined testbeds route between theirs."""
    try:
        n = ipaddress.IPv4Network(net)
    except ValueError as e:
        raise BadInput(f"{where}: mgmt is an IPv4 network like 10.254.0.0/24, not {net!r} ({e})") from None
    if n.num_addresses - 2 < 11 + instances or not n.is_private:
        raise BadInput(f"{where}: mgmt {n} must be private and hold {11 + instances} hosts "
                       f"(the controller and {instances} agents from its 11th address)")
    return str(n)


def check_queues(q, where: Path | str = "--queues") -> int:
    """A queue count: an int in 1..MAX_QUEUES (a bool or a string is not one)."""
    if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= MAX_QUEUES:
        raise BadInput(f"{where}: queues is an integer from 1 to {MAX_QUEUES} (rx and tx queues of every "
                       f"data-plane veth), not {q!r}")
    return q


def _clusters(path: Path, raw, topo: Topology) -> dict[str, list[str]]:
    """Cluster name -> its members, expanded; every member an NF node, none in two clusters."""
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: clusters maps a cluster name to a list of NF instances, not {raw!r}")
    nfs = topo.role("nf")
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for name, members in raw.items():
        if not name or not isinstance(members, list) or not members or \
                not all(isinstance(m, str) for m in members):
            raise BadInput(f"{path}: cluster {name!r} needs a non-empty list of NF instance names")
        out[name] = []
        for m in members:
            for inst in _expand(m, topo.instances):
                if inst not in nfs:
                    what = f"a {topo.nodes[inst]['role']}" if inst in topo.nodes else "no node"
                    raise BadInput(f"{path}: cluster {name!r} names {inst!r}, which is {what}, not an NF instance "
                                   f"(the NF instances: {', '.join(nfs) or 'none'})")
                if owner.get(inst) == name:
                    raise BadInput(f"{path}: cluster {name!r} lists {inst} twice")
                if inst in owner:
                    raise BadInput(f"{path}: {inst} is in cluster {owner[inst]!r} and in cluster {name!r}: "
                                   f"an instance belongs to one cluster at most")
                owner[inst] = name
                out[name].append(inst)
    return out


def _expand(name: str, n: int) -> list[str]:
    return [name.replace("{i}", str(i)) for i in range(n)] if "{i}" in name else [name]


def check_pairs(pairs: dict[str, str], spares: list[str], clusters: dict[str, list[str]], instances: list[str],
                where: str = "--pairs") -> None:
    """A secondary holds its primary's state through its cluster's sharing: the two are in one
    cluster; a spare is in no pair."""
    used: set[str] = set()
    of = {m: c for c, ms in clusters.items() for m in ms}
    for p, s in pairs.items():
        if p == s:
            raise BadInput(f"{where}: {p} cannot be its own secondary")
        for n in (p, s):
            if n not in instances:
                raise BadInput(f"{where}: {n!r} is no NF instance (instances: {', '.join(instances)})")
            if n in used:
                raise BadInput(f"{where}: {n} is in two pairs")
            used.add(n)
        if of.get(p) is None or of.get(p) != of.get(s):
            raise BadInput(f"{where}: {p} and {s} are not in one cluster (the secondary holds the primary's "
                           "state through the cluster's sharing)", hint="--clusters puts them in one")
    for n in spares:
        if n not in instances:
            raise BadInput(f"--spares: {n!r} is no NF instance (instances: {', '.join(instances)})")
        if n in used:
            raise BadInput(f"--spares: {n} is in a pair")
