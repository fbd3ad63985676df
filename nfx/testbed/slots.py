"""Where an instance added at runtime goes (nfx nf add), worked out from the testbed's record
alone, and what refuses an add or a remove before anything is touched. No root, no kernel: the
kernel-side checks (switch port room, NAT mappings still held in a slice) are nfx/testbed/grow.py's.

- Index: the lowest no instance has. It names everything that is per instance: the tx devmap
  slot every other instance redirects to it by (2 + index: slots 0 and 1 are the sides, so 14
  instances at most), its peer links' names (p<index> in the other instance) and its agent's
  management address (the network's 11th host + index, as the builder gives them).
- Wiring: a copy of an existing instance's (the template's): the same switches, in the same
  order (inside, then outside), a veth to each, named as the builder names them.
- NAT port slice: see free_slice."""
import ipaddress
import itertools
import re
from dataclasses import dataclass, field

from .. import layout as L
from ..errors import AlreadyExists, BadInput, NotFound

PEER_SLOTS = L.TX_SLOTS - 2          # tx devmap slots 0 and 1 are the sides
MAX_INDEX = PEER_SLOTS - 1
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
# names already used for interfaces in an instance's, a switch's or the management namespace
RESERVED = {"mg", "lo", "br0", "trunk", "join", "rl0", "rl1", "eth0", "gen0", "gen1"}
AGENT_HOST0 = 10                     # agents' addresses start at the network's 11th host
PORT_FLOOR, PORT_CEIL = 1024, 65535  # public ports an added instance's slice may take
MIN_SLICE = 1024                     # a smaller free run is no slice: refused


def agent_addr(net: str, index: int) -> str:
    """The agent of instance `index`'s address on management network `net`."""
    hosts = list(ipaddress.IPv4Network(net).hosts())
    if AGENT_HOST0 + index >= len(hosts) - 1:            # the last host is the controller's
        raise BadInput(f"the management network {net} has no address left for an instance of index {index}",
                       hint="build the testbed with a larger --mgmt network")
    return str(hosts[AGENT_HOST0 + index])


def mgmt_mac(addr: str) -> str:
    """An agent's MAC on the management bridge, made of its address: an instance added again at
    a removed one's index gets its address and MAC, so the neighbours the others' namespaces
    cached for that address stay right (a random MAC would leave them stale for seconds)."""
    return "02:6d:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(addr).packed)


def peer_slot(index: int) -> int:
    """tx devmap slot of instance `index` in every other instance (slots 0 and 1 are the sides)."""
    return 2 + index


@dataclass
class Plan:
    """Instance `name`, index `index`, made like `template`."""
    name: str
    index: int
    template: str
    ns: str
    switches: list[str]                    # its neighbours, inside first
    agent_addr: str
    peers: dict[str, int] = field(default_factory=dict)    # other instance -> its index

    @property
    def slot(self) -> int:
        return peer_slot(self.index)


def instances(rec) -> list[str]:
    return [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]


def free_indexes(rec) -> list[int]:
    """The indexes no instance has, lowest first: an add takes the first."""
    nodes = rec.get("nodes", {})
    used = {nodes[n].get("index", 0) for n in instances(rec)}
    return [i for i in range(MAX_INDEX + 1) if i not in used]


def free_names(rec, n: int) -> list[str]:
    """The names the next `n` adds get by default, in order (plan's rule): the first nf<K> no
    node has, K from the index the add takes. Fewer if fewer indexes are free."""
    nodes = set(rec.get("nodes", {}))
    out = []
    for index in free_indexes(rec)[:n]:
        name = next(f"nf{k}" for k in itertools.count(index) if f"nf{k}" not in nodes)
        nodes.add(name)
        out.append(name)
    return out


def check_changeable(rec, what: str) -> None:
    """What refuses any add or remove: a testbed not up, joined to another (the instances route
    to it through the management namespace, and one may be lent), or whose instances share
    state or fail over (nfx cluster up: etcd holds the members and the port owners)."""
    if rec.get("status") != "up":
        raise BadInput(f"testbed {rec['name']} is {rec.get('status')}, not up: cannot {what} an instance")
    if rec.get("join"):
        raise BadInput(f"testbed {rec['name']} is joined to {rec['join'].get('peer')}: cannot {what} an instance "
                       "while joined", hint=f"nfx testbed unjoin --name {rec['name']}")
    if rec.get("sharing") or rec.get("cluster"):
        raise BadInput(f"testbed {rec['name']} runs clusters (nfx cluster up): cannot {what} an instance meanwhile",
                       hint=f"nfx cluster down --name {rec['name']}")


def plan(rec, name: str | None = None) -> Plan:
    """Where a new instance goes; BadInput (or AlreadyExists for a taken name) says why not."""
    check_changeable(rec, "add")
    nodes = rec.get("nodes", {})
    nfs = [n for n in instances(rec) if "pin" in nodes[n]]
    if not nfs:
        raise BadInput(f"testbed {rec['name']} has no NF instance to make another like")
    template = nfs[0]
    switches = list(nodes[template].get("ifaces", {}))
    if not switches or any(nodes.get(s, {}).get("role") != "switch" for s in switches):
        raise BadInput(f"the instances of testbed {rec['name']} ({rec.get('topology')}) are not wired between "
                       "switches: an instance added at runtime hangs off the switches, so moves can steer to it")
    free = free_indexes(rec)
    if not free:
        raise BadInput(f"testbed {rec['name']} has {len(instances(rec))} instances, the most there can be: every "
                       f"instance redirects to each other one by a slot of its tx devmap ({L.TX_SLOTS} slots, 2 for "
                       "the sides)")
    index = free[0]
    if name is None:
        name = free_names(rec, 1)[0]
    check_name(rec, name)
    mg = rec.get("mgmt") or {}
    if "net" not in mg:
        raise BadInput(f"testbed {rec['name']} has no management network on record (built by an older nfx)",
                       hint="rebuild it")
    return Plan(name=name, index=index, template=template, ns=f"{rec['name']}-{name}", switches=switches,
                agent_addr=agent_addr(mg["net"], index),
                peers={n: nodes[n].get("index", 0) for n in nfs})


def check_name(rec, name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name) or name in RESERVED:
        raise BadInput(f"bad instance name {name!r}: 1-8 lowercase letters and digits, starting with a letter, "
                       f"and none of {', '.join(sorted(RESERVED))}")
    if name in rec.get("nodes", {}):
        raise AlreadyExists(f"testbed {rec['name']} has a node {name!r} already",
                            hint="nfx nf list shows the instances; --instance names another")


def check_removable(rec, name: str) -> None:
    """What refuses a remove from the record alone (flows and rules are read from the kernel)."""
    check_changeable(rec, "remove")
    nfs = instances(rec)
    if name not in nfs:
        raise NotFound(f"no NF instance {name!r} in testbed {rec['name']}", hint=f"instances: {', '.join(nfs) or 'none'}")
    for c, members in (rec.get("clusters") or {}).items():
        if name in members:
            raise BadInput(f"{name} is in cluster {c} of the testbed's topology: remove only instances in no cluster")
    pairs = rec.get("pairs") or {}
    if name in pairs or name in pairs.values() or name in (rec.get("spares") or []):
        raise BadInput(f"{name} is in a failover pair or a spare of the testbed's topology: it stays")


def free_slice(taken: list[tuple[int, int]], want: int, floor: int = PORT_FLOOR, ceil: int = PORT_CEIL,
               least: int = MIN_SLICE) -> tuple[int, int] | None:
    """A NAT port slice for an added instance: `want` ports (a build slice's width) from the
    lowest free run that holds them, else the widest free run if it has `least` ports; None if
    none has. `taken`: the running instances' slices and retired ones still held (inclusive
    ranges). The running instances' slices never change, so no mapping in flight can meet a
    port of the new instance's: a slice is free only where no instance allocates and none
    holds a mapping."""
    if want < 1:
        raise BadInput(f"a port slice of {want} ports is no slice")
    gaps, at = [], floor
    for lo, hi in sorted((max(lo, floor), min(hi, ceil)) for lo, hi in taken if hi >= floor and lo <= ceil):
        if lo > at:
            gaps.append((at, lo - 1))
        at = max(at, hi + 1)
    if at <= ceil:
        gaps.append((at, ceil))
    for lo, hi in gaps:
        if hi - lo + 1 >= want:
            return lo, lo + want - 1
    widest = max(gaps, key=lambda g: g[1] - g[0], default=None)
    if widest is None or widest[1] - widest[0] + 1 < least:
        return None
    return widest
