"""The switches' wildcard slots (16 each, layout SW_MAX_WILD), as a move uses them: how many a
move of a filter takes at its peak, the refusal of a move the switches have no room for (before
it holds or sends anything), and the slots in use for GET /status (the orchestration planner
plans within them).

What a move adds, per switch that matches its filter by wildcard (the inside one always; the
outside one only for `all`: a partial filter's return traffic is steered by exact keys, which
take no wildcard slot). Steering.point adds the new rule before it takes the filter's old ones
out, and a rollback points the filter back to the source the same way:
- a plain move whose filter has a rule in force already (moved before): its points replace that
  rule, one at a time, so each needs 1 more slot for a moment: 1;
- one whose filter has none: the first point leaves one more rule, and the second point of an
  op move (or a rollback after an lf/ng move's point) adds another before taking it out: 2;
- an armed one (dt): the armed rules sit beside the rules in force until settled, and the
  settling point adds plain ones before both go: 2."""
from .. import layout as L
from ..errors import BadInput
from ..filter import Filter
from .steer import PRIO_MIN, PRIO_TOP, Steering, filter_match


def wild_needed(steer: Steering, flt: Filter, armed: bool = False) -> dict[str, int]:
    """{switch: wildcard slots a move of `flt` needs free there at its start} (0: none)."""
    need = {}
    for name in steer.sw:
        inside = steer.side_of(name) == L.SIDE_IN
        if not inside and not flt.everything:
            need[name] = 0
            continue
        m = filter_match(flt, steer.host_port[name], reverse=not inside)
        has_own = any(w.match == m for w in steer.wild[name].values())
        need[name] = 2 if armed or not has_own else 1
    return need


def check_room(steer: Steering, flt: Filter, armed: bool = False) -> dict[str, int]:
    """Refuse (BadInput) a move of `flt` that would find a switch without the wildcard slots its
    points need; nothing is changed either way. Returns the need per switch."""
    with steer.lock:
        need = wild_needed(steer, flt, armed)
        short = []
        for name, n in need.items():
            free = L.SW_MAX_WILD - steer.sw[name].wild_used() if n else 0
            if n and free < n:
                short.append(f"switch {name} has {free} of {L.SW_MAX_WILD} free, the move needs {n}")
    if short:
        raise BadInput(f"move of {flt.text!r} refused before it began: not enough wildcard slots "
                       f"({'; '.join(short)})",
                       hint="move a prefix the switches already steer (it replaces its own rule), a wider prefix "
                            "(its rule takes out the ones it covers), or move flows back where their covering rule "
                            "sends them; nfx switch rules shows the slots")
    return need


def slots(steer: Steering) -> dict:
    """Per switch: its side, slots in use and in all, the move rules in force (prio, match,
    the instances they send to) and the testbed's defaults under them, for GET /status."""
    out = {}
    with steer.lock:
        for name, s in steer.sw.items():
            port_to_node = {ifname: peer for peer, ifname in steer.rec["nodes"][name]["ifaces"].items()}

            def rule(prio, m, r):
                return {"prio": prio, "src": m.src, "dst": m.dst, "sport": m.sport, "dport": m.dport,
                        "proto": str(m.proto) if m.proto else None,
                        "from_host": m.in_port == steer.host_port[name],
                        "in_port": m.in_port, "to": [port_to_node.get(p, p) for p in r.output],
                        "armed": bool(r.token)}
            out[name] = {"side": "in" if steer.side_of(name) == L.SIDE_IN else "out",
                         "wild_max": L.SW_MAX_WILD, "wild_used": s.wild_used(),
                         "moves": sorted((rule(w.prio, w.match, w.rule) for w in steer.wild[name].values()),
                                         key=lambda x: x["prio"]),
                         "defaults": [rule(p, m, r) for p, m, r in steer.defaults.get(name, [])],
                         "band": [PRIO_MIN, PRIO_TOP]}
    return out
