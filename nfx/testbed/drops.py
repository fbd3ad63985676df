"""What a testbed's interfaces could not send (tx_dropped): with the receiving CPU behind, a veth
drops what its peer's backlog cannot take, as a NIC drops past its ring. A lost packet counted
here is the machine's, not a mechanism's: benches and the orchestration loop report it beside
the sink's loss."""
from .. import registry
from ..loader import netlink, netns


def netns_drops(namespaces) -> int:
    """tx_dropped summed over every interface of these network namespaces (gone ones count 0)."""
    n = 0
    with netlink.Sockets() as nls:
        for ns in namespaces:
            if ns and netns.exists(ns):
                n += nls[ns].tx_dropped()
    return n


def testbed_drops(rec, nodes=None) -> int:
    """A testbed's drops so far: its nodes' namespaces (or only `nodes`') and, for the whole
    testbed, its management namespace."""
    if nodes is None:
        spaces = {i.get("ns") for i in rec["nodes"].values()} | {rec["mgmt"]["ns"]}
    else:
        spaces = {rec["nodes"][n].get("ns") for n in nodes if n in rec["nodes"]}
    return netns_drops(spaces)


def path_drops(name: str) -> int:
    """This testbed's drops so far, and those of the testbed it is joined to (the transit and
    the trunks included)."""
    rec = registry.load(name)
    recs = [rec] + ([registry.load(rec["join"]["peer"])] if rec.get("join") else [])
    return sum(testbed_drops(r) for r in recs)
