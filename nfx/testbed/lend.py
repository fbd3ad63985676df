"""An instance a testbed lends the testbed it is joined to (issue 14, multi-host): `nfx testbed
lend --name B --instance nf1`. From then on it serves the joined testbed's traffic, reached over
the trunks (nfx/testbed/join.py): at each of B's switches with a trunk, whatever arrives on the
trunk goes to the lent instance and whatever the lent instance sends goes back over the trunk.
A's controller then moves flows to it, or fails a primary over to it, as `nf1@B`, steering A's
switches to the trunk (nfx/control/steer.py). The lent instance's next hops are the borrower's
hosts, which have the same MACs as the lender's (builder.host_mac).

One lent instance per testbed: what arrives on a trunk is told apart by nothing but the trunk.
An instance the lender's own switches send host traffic to by default cannot be lent."""
from pathlib import Path

from .. import registry
from ..control.switch import Match, Rule, Switch
from ..errors import AlreadyExists, BadInput, NotFound
from .join import TRUNK, over_trunk

# above the testbed's catch-all (anything to the host, 2000), below the host's default (1000) and
# every move's rule, which match on a host port or on a flow and so never on what a trunk carries
LEND_PRIO = 1500


def _switches(rec) -> dict[str, Switch]:
    j = rec.get("join") or {}
    return {sw: Switch.open(sw, rec["nodes"][sw]["ns"], Path(rec["nodes"][sw]["pin"])) for sw in j.get("trunks", {})}


def lend(name: str, instance: str) -> dict:
    rec = registry.load(name)
    j = rec.get("join")
    if not j:
        raise BadInput(f"testbed {name} is joined to no other: there is nobody to lend to",
                       hint=f"nfx testbed join --name {name} --peer OTHER")
    if not j.get("trunks"):
        raise BadInput(f"testbed {name} shares no switch with {j['peer']}: no trunk reaches its instances")
    if instance not in rec.instances():
        raise NotFound(f"no NF instance {instance!r} in testbed {name}", hint=f"instances: {', '.join(rec.instances())}")
    if j.get("lent"):
        raise AlreadyExists(f"testbed {name} lends {j['lent']['instance']} already (one at a time)",
                            hint=f"nfx testbed unlend --name {name}")
    if rec.get("spread") or instance == rec.instances()[0]:
        raise BadInput(f"{name}'s switches send its own hosts' traffic to {instance} by default: it cannot serve "
                       f"{j['peer']}'s as well", hint="lend another instance")
    j["lent"] = {"instance": instance, "rules": {}}
    try:
        for sw, s in _switches(rec).items():
            port = rec["nodes"][sw]["ifaces"][instance]
            ids = j["lent"]["rules"][sw] = []
            ids.append(s.add_wild(Match(in_port=TRUNK), Rule(output=[port]), prio=LEND_PRIO))
            ids.append(s.add_wild(Match(in_port=port), Rule(output=[TRUNK]), prio=LEND_PRIO))
    except BaseException:
        _take_back(rec)
        raise
    rec.save()
    return {"name": name, "peer": j["peer"], "instance": instance, "as": f"{instance}{registry.SITE_SEP}{name}"}


def _take_back(rec) -> None:
    lent = (rec.get("join") or {}).pop("lent", None)
    if not lent:
        return
    for sw, s in _switches(rec).items():
        for rid in lent["rules"].get(sw, []):
            s.remove(rid)


def unlend(name: str) -> dict:
    rec = registry.load(name)
    lent = (rec.get("join") or {}).get("lent")
    if not lent:
        raise BadInput(f"testbed {name} lends no instance")
    try:
        busy = over_trunk(registry.load(rec["join"]["peer"]))
    except NotFound:
        busy = []
    if busy:
        raise BadInput(f"{', '.join(busy)} still sends flows over the trunk to {lent['instance']}: taking it back would cut "
                       "them off", hint=f"move them back first (nfx move --name {rec['join']['peer']} --from "
                       f"{lent['instance']}@{name} --to ...)")
    _take_back(rec)
    rec.save()
    return {"name": name, "instance": lent["instance"]}

