"""Two testbeds joined as two machines (issue 14, multi-host): `nfx testbed join --name A --peer B`.

What joins them is what joins two real machines: a routed link between their management
networks. A veth between the two management namespaces carries a /30 of its own (10.253.x.y);
each management namespace routes the other's network over it and forwards; every NF namespace
routes the other's network through its own management namespace. Over it B's agents reach an
etcd in A's management network (`nfx cluster up --name B --etcd` A's URL) and A's controller
reaches B's agents. Each testbed keeps its own agents, controller and switches.

The data plane crosses the same routed link: every switch that both testbeds have (by name: si,
so) gets a trunk, a VXLAN device whose UDP socket sits in the management namespace (so its
frames are routed over the transit like any other traffic between the machines) and which
carries frames between the two switches of that name. Its switch's program runs on it, in the
trunk role (nfx/control/switch.py). An instance one testbed lends the other (nfx/testbed/lend.py)
is reached over the trunks.

On two real machines the same is: the machines' own network between them (the transit), a route
on each to the other's management network, and one etcd both reach (README, "Two machines")."""
import ipaddress
from pathlib import Path

from .. import layout as L, registry
from ..control.switch import Switch
from ..errors import AlreadyExists, BadInput, NotFound
from ..loader import netlink, netns

TRANSITS = ipaddress.IPv4Network("10.253.0.0/16")
LINK = "join"                 # the routed link's end in each management namespace
TRUNK = "trunk"               # a switch's end of the tunnel to the joined testbed's same switch
VNI_BASE = 4000               # trunk of the i-th shared switch (by name): VNI_BASE + i
VXLAN_PORT = 4789
VXLAN_HDRS = 50               # outer IPv4 + UDP + VXLAN + inner Ethernet


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


def join(name: str, peer: str, rate_mbit: float = 0.0) -> dict:
    """`rate_mbit` (0: unshaped): the transit's capacity each way, as a link between two machines
    has one (a tbf at each end): what crosses it (trunk frames, state, statelets, the
    management traffic) shares it."""
    if name == peer:
        raise BadInput("a testbed cannot join itself")
    if not 0 <= rate_mbit <= 100_000:
        raise BadInput(f"--rate-mbit is 0 (unshaped) to 100000, not {rate_mbit:g}")
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
            for m in mg:
                # a trunk carries whole (stamped) frames: the transit fits them with their tunnel headers
                nls[m["ns"]].mtu(LINK, L.STAMP_MTU + VXLAN_HDRS)
                if rate_mbit:
                    nls[m["ns"]].shape(LINK, rate_mbit)
                # a link delivers in order; frames its veth received on two CPUs could be
                # processed out of order (an IBC overtaken by the frames behind it: the far
                # instance took them for the source's and dropped them: 2-5 packets in 5 of 20
                # SLiM moves), so one CPU receives them all
                netns.rps_one_cpu(m["ns"], LINK)
            for i, r in enumerate(recs):
                here, there = mg[i], mg[1 - i]
                # on the record first: a failure from here on finds what to take back (_undo)
                r["join"] = {"peer": recs[1 - i]["name"], "transit": str(transit), "rate_mbit": rate_mbit, "addr": ends[i],
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
            for i, r in enumerate(recs):
                _trunks(nls, r, recs[1 - i], ends[i], ends[1 - i])
    except BaseException:
        if done:
            _undo(recs)
        raise
    for r in recs:
        r.save()
    return {"name": name, "peer": peer, "transit": str(transit), "addrs": {name: ends[0], peer: ends[1]},
            "mgmt": {name: str(nets[0]), peer: str(nets[1])}, "trunks": sorted(recs[0]["join"]["trunks"]),
            "rate_mbit": rate_mbit}


def _switches(rec) -> list[str]:
    return sorted(n for n, i in rec["nodes"].items() if i.get("role") == "switch")


def _trunks(nls, rec, peer_rec, local: str, remote: str) -> None:
    """Each switch both testbeds have gets its trunk: made from the management namespace (where
    its UDP socket stays) into the switch's, with the switch's program and the trunk role."""
    rec["join"]["trunks"] = {}
    shared = [sw for sw in _switches(rec) if sw in _switches(peer_rec)]
    mg = nls[rec["mgmt"]["ns"]]
    for i, sw in enumerate(shared):
        info = rec["nodes"][sw]
        here = nls[info["ns"]]
        mg.vxlan(TRUNK, VNI_BASE + i, local, remote, at=here, port=VXLAN_PORT)
        rec["join"]["trunks"][sw] = TRUNK       # before anything else: _undo deletes it
        here.mtu(TRUNK, L.STAMP_MTU)
        here.up(TRUNK)
        Switch.open(sw, info["ns"], Path(info["pin"])).add_trunk(TRUNK)


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
            for sw in j.get("trunks", {}):
                info = r["nodes"][sw]
                if not netns.exists(info["ns"]):
                    continue
                try:
                    idx = nls[info["ns"]].index(TRUNK)
                except NotFound:
                    continue
                try:
                    s = Switch.open(sw, info["ns"], Path(info["pin"]))
                except NotFound:
                    s = None                    # the switch is gone already: no rule or role left
                for rid in ((j.get("lent") or {}).get("rules") or {}).get(sw, []) if s else ():
                    try:
                        s.remove(rid)           # nfx testbed lend's rules, which point at the trunk
                    except NotFound:
                        pass
                if s:
                    s.forget_port(idx)
                nls[info["ns"]].delete(TRUNK, missing_ok=True)
            for inst in r.instances():
                ns = r["nodes"][inst]["ns"]
                for dst in (j.get("peer_net"), j.get("transit")):
                    if dst and netns.exists(ns):
                        nls[ns].route_del(dst)
            r.pop("join", None)


def over_trunk(rec) -> list[str]:
    """The switches of `rec` with a rule that sends flows over a trunk, other than a lend's."""
    j = rec.get("join") or {}
    lent = (j.get("lent") or {}).get("rules") or {}
    out = []
    for sw in j.get("trunks", {}):
        info = rec["nodes"][sw]
        try:
            rules = Switch.open(sw, info["ns"], Path(info["pin"])).rules()
        except NotFound:
            continue
        if any(TRUNK in r.rule.output and r.id not in lent.get(sw, []) for r in rules):
            out.append(f"{rec['name']}'s {sw}")
    return out


def unjoin(name: str, force: bool = False) -> dict:
    """Refused while a switch sends flows over a trunk (they would be cut off): move them back
    first. `force` (a testbed going down) unjoins anyway."""
    rec = registry.load(name)
    j = rec.get("join")
    if not j:
        raise BadInput(f"testbed {name} is joined to no other", hint=f"nfx testbed join --name {name} --peer OTHER")
    recs = [rec]
    try:
        recs.append(registry.load(j["peer"]))
    except NotFound:
        pass                          # gone already: its end of the link went with it
    busy = [] if force else [w for r in recs for w in over_trunk(r)]
    if busy:
        raise BadInput(f"flows go over the trunks to the joined testbed ({', '.join(busy)}): unjoining would cut them off",
                       hint="move them back first (nfx move --from INSTANCE@TESTBED --to ...)")
    _undo(recs)
    for r in recs:
        r.save()
    return {"name": name, "peer": j["peer"], "transit": j["transit"]}
