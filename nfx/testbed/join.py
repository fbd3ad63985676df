"""Two testbeds joined as two machines (issue 14, multi-host): `nfx testbed join --name A --peer B`.

What joins them is what joins two real machines: a routed link between their management
networks. A veth between the two management namespaces carries a /30 of its own (10.253.x.y);
each management namespace routes the other's network over it and forwards; every NF namespace
routes the other's network through its own management namespace. Over it B's agents reach an
etcd in A's management network (`nfx cluster up --name B --etcd` A's URL) and A's controller
reaches B's agents. Each testbed keeps its own agents, controller and switches.

On two real machines the same is: the machines' own network between them (the transit), a route
on each to the other's management network, and one etcd both reach (README, "Two machines")."""
import ipaddress

from .. import registry
from ..errors import AlreadyExists, BadInput, NotFound
from ..loader import netlink, netns

TRANSITS = ipaddress.IPv4Network("10.253.0.0/16")
LINK = "join"                 # the routed link's end in each management namespace


def _mgmt_net(rec) -> ipaddress.IPv4Network:
    mg = rec.get("mgmt") or {}
    if "net" not in mg:
        raise BadInput(f"testbed {rec['name']} has no management network on record (built by an older nfx)",
                       hint="rebuild it")
    return ipaddress.IPv4Network(mg["net"])


def _free_transit() -> ipaddress.IPv4Network:
    used = set()
    for name in registry.names():
        try:
            j = registry.load(name).get("join")
        except NotFound:
            continue
        if j:
            used.add(j["transit"])
    for net in TRANSITS.subnets(new_prefix=30):
        if str(net) not in used:
            return net
    raise BadInput(f"every /30 of {TRANSITS} is some join's transit")


def _forwarding(ns: str, on: bool) -> None:
    # /proc/sys/net belongs to the network namespace of the task that opens it
    with netns.enter(ns):
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1" if on else "0")


def join(name: str, peer: str) -> dict:
    if name == peer:
        raise BadInput("a testbed cannot join itself")
    recs = [registry.load(name), registry.load(peer)]
    for r in recs:
        if r.get("status") != "up":
            raise BadInput(f"testbed {r['name']} is {r.get('status')}, not up")
        if r.get("join"):
            raise AlreadyExists(f"testbed {r['name']} is joined to {r['join']['peer']} already",
                                hint=f"nfx testbed unjoin --name {r['name']}")
    nets = [_mgmt_net(r) for r in recs]
    if nets[0].overlaps(nets[1]):
        raise BadInput(f"the management networks of {name} and {peer} overlap ({nets[0]}, {nets[1]}): "
                       "routing between them needs two", hint=f"build {peer} with --mgmt 10.254.0.0/24")
    transit = _free_transit()
    ends = [str(a) for a in list(transit.hosts())[:2]]
    done = []
    try:
        with netlink.Sockets() as nls:
            mg = [r["mgmt"] for r in recs]
            nls[mg[0]["ns"]].veth(LINK, LINK, peer_at=nls[mg[1]["ns"]])
            done.append("link")
            for i, r in enumerate(recs):
                here, there = mg[i], mg[1 - i]
                # on the record first: a failure from here on finds what to take back (_undo)
                r["join"] = {"peer": recs[1 - i]["name"], "transit": str(transit), "addr": ends[i],
                             "peer_addr": ends[1 - i], "peer_net": str(nets[1 - i]), "peer_controller": there["controller"]}
                nl = nls[here["ns"]]
                nl.addr(LINK, f"{ends[i]}/{transit.prefixlen}")
                nl.route(str(nets[1 - i]), ends[1 - i])
                _forwarding(here["ns"], True)
                for inst in r.instances():
                    # the agent reaches the other's network, and the link's own ends (what the
                    # other management namespace sends from), through its management namespace
                    for dst in (str(nets[1 - i]), str(transit)):
                        nls[r["nodes"][inst]["ns"]].route(dst, here["controller"])
    except BaseException:
        if done:
            _undo(recs)
        raise
    for r in recs:
        r.save()
    return {"name": name, "peer": peer, "transit": str(transit), "addrs": {name: ends[0], peer: ends[1]},
            "mgmt": {name: str(nets[0]), peer: str(nets[1])}}


def _undo(recs) -> None:
    """The link (deleting one end deletes both), the NF namespaces' routes, forwarding off."""
    with netlink.Sockets() as nls:
        for r in recs:
            mg = r.get("mgmt") or {}
            if not mg or not netns.exists(mg["ns"]):
                continue
            nls[mg["ns"]].delete(LINK, missing_ok=True)
            _forwarding(mg["ns"], False)
            j = r.get("join") or {}
            for inst in r.instances():
                ns = r["nodes"][inst]["ns"]
                for dst in (j.get("peer_net"), j.get("transit")):
                    if dst and netns.exists(ns):
                        nls[ns].route_del(dst)
            r.pop("join", None)


def unjoin(name: str) -> dict:
    rec = registry.load(name)
    j = rec.get("join")
    if not j:
        raise BadInput(f"testbed {name} is joined to no other", hint=f"nfx testbed join --name {name} --peer OTHER")
    recs = [rec]
    try:
        recs.append(registry.load(j["peer"]))
    except NotFound:
        pass                          # gone already: its end of the link went with it
    _undo(recs)
    for r in recs:
        r.save()
    return {"name": name, "peer": j["peer"], "transit": j["transit"]}
