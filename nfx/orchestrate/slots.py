"""The switches' wildcard slots as the planner sees them: each inside switch's move rules (from
the controller's GET /status, nfx/control/steer_slots.py) and what a move of a source prefix to
an instance would do to them. Pure: a model, copied and changed by `after`, never the switches.

The controller refuses a move that lacks its slots (1 free when the prefix has a rule in force,
which the move replaces; else 2), and after each move takes out the move rules no packet can
reach (newer ones cover them) and those that send where the rules under them would: `after`
does the same, so a plan of several moves counts what each leaves for the next. Rules that
match on more than a source prefix from the host (a SHarP handover's, a port filter's) take
their slot and are left alone."""
import ipaddress
from dataclasses import dataclass, field, replace

from ..control.steer import prefix_covered

ANY = ipaddress.IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class WildRule:
    prio: int                              # lower: newer, matched first
    net: ipaddress.IPv4Network | None      # its source prefix; None: it matches on more than that
    to: tuple[str, ...]


@dataclass
class SwitchSlots:
    name: str
    max: int
    used: int                              # every slot: defaults, moves, SHarP's
    rules: list[WildRule] = field(default_factory=list)    # the move rules in force
    default_to: tuple[str, ...] = ()       # where the host's traffic goes under them

    @property
    def free(self) -> int:
        return self.max - self.used

    def own_rule(self, net) -> bool:
        return any(r.net == net for r in self.rules)

    def need(self, net) -> int:
        """Slots a move of `net` needs free at its start (as the controller checks)."""
        return 1 if self.own_rule(net) else 2

    def after(self, net, dst: str) -> "SwitchSlots":
        """This switch once a move of `net` to `dst` is done and the controller has pruned."""
        kept = [r for r in self.rules if r.net != net]
        top = min([r.prio for r in self.rules], default=1000)
        new = WildRule(top - 1, net, (dst,))
        rules = sorted(kept + [new], key=lambda r: r.prio)
        dead = set()
        for i, r in enumerate(rules):
            if r is not new and r.net is not None and _covered(r.net, [x.net for x in rules[:i] if x.net is not None]):
                dead.add(r)
        below = [r for r in rules if r not in dead] + [WildRule(1 << 20, ANY, self.default_to)]
        for r in sorted(rules, key=lambda r: -r.prio):          # oldest first
            if r in dead or r is new or r.net is None:
                continue
            if _redundant(r, [x for x in below if x.prio > r.prio]):
                dead.add(r)
                below.remove(r)
        left = [r for r in rules if r not in dead]
        return replace(self, used=self.used - len(self.rules) + len(left), rules=left)


def _covered(net, newer: list) -> bool:
    return prefix_covered(net, newer)     # as the controller's pruning judges it


def _redundant(r: WildRule, older: list[WildRule]) -> bool:
    for x in sorted(older, key=lambda x: x.prio):
        if x.net is not None and not r.net.overlaps(x.net):
            continue
        if x.net is None or x.to != r.to:
            return False                   # some of r's flows would go elsewhere without it
        if r.net.subnet_of(x.net):
            return True
    return False


@dataclass
class SlotBook:
    """The inside switches' slots (a partial source filter takes a wildcard there only)."""
    switches: list[SwitchSlots]

    @classmethod
    def from_status(cls, status: dict) -> "SlotBook | None":
        """From GET /status; None when moves take no wildcard slot (steered by key) or the
        controller does not report them."""
        if status.get("steers_by_key") or not status.get("switches"):
            return None
        out = []
        for name, sw in status["switches"].items():
            if sw.get("side") != "in":
                continue
            rules = [WildRule(r["prio"], _src_only(r), tuple(r["to"])) for r in sw.get("moves", [])]
            host = [d for d in sorted(sw.get("defaults", []), key=lambda d: d["prio"]) if _src_only(d) == ANY]
            out.append(SwitchSlots(name, int(sw["wild_max"]), int(sw["wild_used"]), rules,
                                   tuple(host[0]["to"]) if host else ()))
        return cls(out) if out else None

    @property
    def free(self) -> int:
        return min(s.free for s in self.switches)

    def need(self, net) -> int:
        return max(s.need(net) for s in self.switches)

    def fits(self, net) -> bool:
        return all(s.free >= s.need(net) for s in self.switches)

    def after(self, net, dst: str) -> "SlotBook":
        return SlotBook([s.after(net, dst) for s in self.switches])

    def cost(self, net, dst: str) -> int | None:
        """Slots the move leaves taken (negative: freed), or None if it does not fit now."""
        if not self.fits(net):
            return None
        return max(a.used - s.used for s, a in zip(self.switches, self.after(net, dst).switches))


def _src_only(r: dict):
    """The rule's source prefix if it matches the host's traffic by that alone, else None."""
    if not r.get("from_host") or r.get("dst") or r.get("sport") or r.get("dport") or r.get("proto") or r.get("armed"):
        return None
    return ipaddress.IPv4Network(r.get("src") or "0.0.0.0/0", strict=False)
