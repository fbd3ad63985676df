"""The planner: from each instance's load and the flows it holds (in blocks of source
addresses), the actions that bring every instance to the policy's target load: add instances,
move a prefix of blocks from one instance to another, take an instance out. Pure: give it views,
read actions.

A block is 2^b consecutive source addresses, aligned (b: the policy's block_bits; 0, one
inside host), every port and protocol of them. The loop keeps each block's flows at one
instance, so a move's filter (`src=A/P`, the one kind of range the gate's filters take) names
exactly the flows it carries; an aligned power-of-two window of blocks one instance holds
moves as one prefix, in one move. A block whose flows sit at two instances (placed that way
before the loop began) is never moved, nor any prefix over it.

How much a move carries: the most loaded instance sheds towards the mean, the least loaded
takes up to the mean, and neither goes past the target. Which run: `heaviest` takes the pps
in the fewest flows; `least-state` the fewest state bytes per pps; `least-bytes` the fewest
state bytes in all. Which mechanism: the one of the policy's whose past moves (CostModel) say
it moves that many flows fastest. Where: the least loaded instance with room; `cluster-first`
tries the source's sharing cluster's members first (a move inside one carries the last batch
only), the others when none has room, and says which in the reason.

The switches' wildcard slots (slots.py): a move needs 1 or 2 free, and may leave one more taken
or free some; the planner counts them move by move, leaves out the prefixes they do not allow,
prefers among equally good ones a move that takes no new slot (a prefix that has a rule: moved
back, or wider, taking out the rules it covers), ahead of closeness when few are left, and notes
a move the slots alone ruled out (Planner.notes)."""
import ipaddress
import dataclasses
import math
from dataclasses import dataclass, field

from .analyse import Event
from .policy import Policy
from .slots import SlotBook


@dataclass(frozen=True)
class Block:
    index: int                 # source addresses index * 2^b .. (index + 1) * 2^b - 1 (host order)
    flows: int
    pps: float
    state_bytes: int


@dataclass
class InstanceView:
    name: str
    pps: float
    flows: int = 0
    state_bytes: int = 0
    blocks: dict[int, Block] = field(default_factory=dict)    # the blocks only this instance holds
    removable: bool = True     # the loop may take it out (not one the testbed was built with)


@dataclass
class Action:
    kind: str                  # add | move | remove
    reason: str
    instance: str              # add, remove: the instance; move: the source
    dst: str | None = None
    filter: str | None = None
    blocks: tuple[int, int] | None = None   # first and last block index of a move's prefix
    flows: int = 0
    pps: float = 0.0
    state_bytes: int = 0
    mechanism: str | None = None
    guarantee: str | None = None
    opts: str | None = None
    est_s: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


class CostModel:
    """Move time against flows moved, per mechanism, from the moves the loop has made: a least
    squares line through (flows, seconds), a mean before there are two sizes, `prior_s` before
    there is any."""

    def __init__(self, prior_s: float = 0.2):
        self.prior_s = prior_s
        self.points: dict[str, list[tuple[int, float]]] = {}

    def record(self, mechanism: str, flows: int, seconds: float) -> None:
        pts = self.points.setdefault(mechanism, [])
        pts.append((flows, seconds))
        del pts[:-50]                    # the recent past: the machine's load changes

    def estimate(self, mechanism: str, flows: int) -> float:
        pts = self.points.get(mechanism)
        if not pts:
            return self.prior_s
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var == 0:
            return my
        slope = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var)
        return max(0.0, my + slope * (flows - mx))

    def choose(self, mechanisms: list[str], flows: int) -> tuple[str, float]:
        return min(((m, self.estimate(m, flows)) for m in mechanisms), key=lambda x: x[1])


def views_from(flows: dict[str, list[tuple[int, float, int]]], pps: dict[str, float], block_bits: int,
               fixed: set[str] = frozenset()) -> dict[str, InstanceView]:
    """Each instance's view from the flows it holds, (source address as an int, pps, state
    bytes) each, and its measured pps. A block whose flows sit at two instances is split: in
    neither's blocks. `fixed`: the instances the loop may not take out."""
    owners: dict[int, set[str]] = {}
    for name, fl in flows.items():
        for addr, _, _ in fl:
            owners.setdefault(addr >> block_bits, set()).add(name)
    views = {}
    for name in set(flows) | set(pps):
        acc: dict[int, list] = {}
        fl = flows.get(name, [])
        for addr, f_pps, sb in fl:
            a = acc.setdefault(addr >> block_bits, [0, 0.0, 0])
            a[0] += 1
            a[1] += f_pps
            a[2] += sb
        blocks = {i: Block(i, a[0], a[1], a[2]) for i, a in acc.items() if owners[i] == {name}}
        views[name] = InstanceView(name, pps.get(name, sum(f[1] for f in fl)), len(fl),
                                   sum(f[2] for f in fl), blocks, name not in fixed)
    return views


def prefix_filter(first: int, blocks: int, block_bits: int) -> str:
    """The filter of `blocks` blocks (a power of two, `first` a multiple of it): src=A/P."""
    bits = block_bits + blocks.bit_length() - 1
    if blocks & (blocks - 1) or first % blocks:
        raise ValueError(f"blocks {first}+{blocks} are no prefix")
    return f"src={ipaddress.IPv4Address(first << block_bits)}/{32 - bits}"


def runs_of(view: InstanceView) -> list[list[Block]]:
    """The maximal runs of consecutive blocks `view` holds: no other instance's, nor a split
    one, inside. A block nobody holds ends a run too: a filter over it would steer its new
    flows to wherever the last move of a run around it went."""
    held = sorted(view.blocks)
    runs, cur = [], []
    for i in held:
        if cur and i != cur[-1].index + 1:
            runs.append(cur)
            cur = []
        cur.append(view.blocks[i])
    if cur:
        runs.append(cur)
    return runs


def _score(strategy: str, run: list[Block]) -> tuple:
    pps = sum(b.pps for b in run) or 1e-9
    flows = sum(b.flows for b in run)
    sb = sum(b.state_bytes for b in run)
    if strategy == "least-state":
        return (sb / pps, flows)
    if strategy == "least-bytes":
        return (sb, flows)
    return (flows / pps, sb)             # cluster-first chooses the destination; its flows as heaviest


def prefixes(run: list[Block]):
    """Every window of `run` that one prefix names: 2^j blocks whose first index is a multiple of 2^j."""
    if not run:
        return
    lo, hi = run[0].index, run[-1].index
    size = 1
    while size <= len(run):
        start = (lo + size - 1) // size * size
        while start + size - 1 <= hi:
            yield run[start - lo:start - lo + size]
            start += size
        size *= 2


def choose_run(runs: list[list[Block]], amount: float, room: float, strategy: str,
               slot_cost=None, scarce: bool = False) -> list[Block] | None:
    """The prefix of blocks (within one of `runs`) that carries about `amount` pps and at most
    `room`: the closest to it (to a tenth of it), and among those the best by `strategy`.
    slot_cost(window): the switch slots its move would leave taken (<= 0: none new), None if
    the switches lack the slots for it (left out). Among equally close windows the one that
    takes no new slot goes first; with `scarce` slots, before any closer one that would."""
    best, best_key = None, None
    for run in runs:
        for win in prefixes(run):
            pps = sum(b.pps for b in win)
            if pps > room or pps <= 0:
                continue
            cost = 0
            if slot_cost is not None:
                cost = slot_cost(win)
                if cost is None:
                    continue
            takes = cost > 0
            key = (takes and scarce, round(abs(pps - amount) / max(amount, 1e-9), 1), takes, _score(strategy, win))
            if best_key is None or key < best_key:
                best, best_key = win, key
    return best


# scale in only when the instances left would run at most this share of the target: a total that
# hovers at a multiple of the target otherwise adds and removes an instance every few seconds
# (seen in a ramp held at this machine's limit)
SCALE_IN_BELOW = 0.8
# with this many wildcard slots free or fewer, a move that takes none goes before a closer one
SLOT_RESERVE = 4


class Planner:
    def __init__(self, policy: Policy, cost: CostModel | None = None):
        self.policy = policy
        self.cost = cost or CostModel()

    @property
    def target_pps(self) -> float:
        return self.policy.planner.target * self.policy.instance.capacity_pps

    def wanted(self, total_pps: float) -> int:
        pl = self.policy.planner
        return min(pl.max_instances, max(pl.min_instances, math.ceil(total_pps / self.target_pps - 1e-9)))

    def plan(self, views: dict[str, InstanceView], events: list[Event], spare: list[str],
             busy: set[str] = frozenset(), slots: SlotBook | None = None,
             clusters: dict[str, str] | None = None) -> list[Action]:
        """The actions for this round, in the order to take them. `spare`: names for instances
        the loop may add, in order; `busy`: instances an action has touched too recently;
        `slots`: the switches' wildcard slots (None: moves take none); `clusters`: instance ->
        its sharing cluster (cluster-first). Why a wanted move was not planned: self.notes."""
        views = {n: dataclasses.replace(v, blocks=dict(v.blocks)) for n, v in views.items()}
        self.begin(slots, clusters)
        total = sum(v.pps for v in views.values())
        want = self.wanted(total)
        actions: list[Action] = []
        kinds = {(e.kind, e.instance) for e in events if e.active}
        over = sorted(n for k, n in kinds if k == "overload")
        if want > len(views) and (over or total > len(views) * self.target_pps):
            for name in spare[:want - len(views)]:
                actions.append(Action("add", f"{total:,.0f} pps wants {want} instances at "
                                              f"{self.target_pps:,.0f} pps each; {len(views)} run", name))
                views[name] = InstanceView(name, 0.0, removable=True)
        actions += self._balance(views, busy, over)
        if not actions:
            actions += self._flows_balance(views, busy, sorted(n for k, n in kinds if k == "imbalance"))
        want_in = self.wanted(total / SCALE_IN_BELOW)
        if not actions and want_in < len(views):
            actions += self._scale_in(views, busy, want_in,
                                      sorted(n for k, n in kinds if k == "underload"))
        return actions

    def begin(self, slots: SlotBook | None = None, clusters: dict[str, str] | None = None) -> None:
        """A round's slots and clusters (plan() calls it; a drain's planning too)."""
        self.slots = slots
        self.clusters = dict(clusters or {})
        self.notes: list[str] = []

    def _net(self, run: list[Block]):
        bits = self.policy.planner.block_bits + len(run).bit_length() - 1
        return ipaddress.IPv4Network((run[0].index << self.policy.planner.block_bits, 32 - bits))

    def pick(self, src: InstanceView, dst: InstanceView, amount: float, room: float,
             runs: list[list[Block]] | None = None) -> list[Block] | None:
        """choose_run within the switches' slots; a move the slots alone rule out is noted."""
        runs = runs_of(src) if runs is None else runs
        strategy = self.policy.planner.strategy
        if self.slots is None:
            return choose_run(runs, amount, room, strategy)
        book = self.slots
        run = choose_run(runs, amount, room, strategy, lambda w: book.cost(self._net(w), dst.name),
                         scarce=book.free <= SLOT_RESERVE)
        if run is None and choose_run(runs, amount, room, strategy) is not None:
            self.notes.append(f"no move {src.name} -> {dst.name}: every prefix within {room:,.0f} pps of room "
                              f"needs a new wildcard slot pair and the inside switch has {book.free} free "
                              f"(a prefix with a rule in force needs 1)")
        return run

    def move(self, src: InstanceView, dst: InstanceView, run: list[Block], reason: str) -> Action:
        pl = self.policy.planner
        lo, hi = run[0].index, run[-1].index
        flows = sum(b.flows for b in run)
        mech, est = self.cost.choose(pl.mechanism_list, flows)
        if self.slots is not None:
            net = self._net(run)
            before, own = self.slots.free, any(s.own_rule(net) for s in self.slots.switches)
            self.slots = self.slots.after(net, dst.name)
            taken = before - self.slots.free
            reason += ("; switch slots: " + ("replaces its own rule" if own else "a new rule") +
                       (f", {taken} taken" if taken > 0 else f", {-taken} freed" if taken < 0 else ", none taken") +
                       f", {self.slots.free} free after")
        a = Action("move", reason, src.name, dst.name, prefix_filter(lo, len(run), pl.block_bits),
                   (lo, hi), flows, sum(b.pps for b in run), sum(b.state_bytes for b in run),
                   mech, pl.guarantee, pl.opts or None, est)
        for b in run:                    # what the views look like after it
            del src.blocks[b.index]
            dst.blocks[b.index] = b
        src.pps -= a.pps
        dst.pps += a.pps
        src.flows -= flows
        dst.flows += flows
        src.state_bytes -= a.state_bytes
        dst.state_bytes += a.state_bytes
        return a

    def _order(self, src: InstanceView, cands: list[InstanceView], key) -> list[InstanceView]:
        """The destinations to try, best first by `key`; cluster-first: src's cluster's first."""
        ordered = sorted(cands, key=lambda v: (key(v), v.name))
        if self.policy.planner.strategy != "cluster-first":
            return ordered
        home = self.clusters.get(src.name)
        return [v for v in ordered if home and self.clusters.get(v.name) == home] + \
               [v for v in ordered if not home or self.clusters.get(v.name) != home]

    def _cluster_why(self, src: InstanceView, dst: InstanceView, order: list[InstanceView]) -> str:
        if self.policy.planner.strategy != "cluster-first":
            return ""
        home = self.clusters.get(src.name)
        if home is None:
            return f"; cluster-first: {src.name} is in no sharing cluster, {dst.name} is the least loaded"
        if self.clusters.get(dst.name) == home:
            return f"; cluster-first: {dst.name} shares {src.name}'s cluster {home} (the move carries the last batch only)"
        members = [v.name for v in order if self.clusters.get(v.name) == home]
        return (f"; cluster-first: no member of {src.name}'s cluster {home} ({', '.join(members)}) has room, "
                f"{dst.name} is outside it" if members else
                f"; cluster-first: {src.name}'s cluster {home} has no other member to take it, {dst.name} is outside it")

    def _place(self, src: InstanceView, cands: list[InstanceView], key, want, runs=None):
        """(dst, run, room, why) for a move off src: the candidates in _order, the first with
        room (want(dst) -> (amount, room), or None) and a prefix that fits it; else None."""
        order = self._order(src, cands, key)
        for dst in order:
            w = want(dst)
            if w is None or w[1] <= 0:
                continue
            run = self.pick(src, dst, w[0], w[1], runs)
            if run:
                return dst, run, w[1], self._cluster_why(src, dst, order)
        return None

    def _balance(self, views: dict[str, InstanceView], busy, over: list[str]) -> list[Action]:
        """Moves from the most loaded instance to the least, while one is above the target (or
        overloaded) and another has room below it."""
        actions = []
        target = self.target_pps
        for _ in range(2 * len(views)):
            ready = [v for v in views.values() if v.name not in busy]
            if len(ready) < 2:
                break
            mean = sum(v.pps for v in views.values()) / len(views)
            src = max(ready, key=lambda v: v.pps)
            if src.pps <= target and src.name not in over:
                break
            shed = src.pps - max(mean, 0.0)
            if shed <= 0:
                break

            def want(dst):
                room = max(mean, target) - dst.pps      # past the target only when the mean is
                return min(shed, room), room
            got = self._place(src, [v for v in ready if v is not src], lambda v: v.pps, want)
            if not got:
                break
            dst, run, room, cwhy = got
            why = (f"{src.name} at {src.pps:,.0f} pps is over the target {target:,.0f}"
                   + (" (overloaded)" if src.name in over else "") + f"; {dst.name} has {room:,.0f} pps of room" + cwhy)
            actions.append(self.move(src, dst, run, why))
        return actions

    def _flows_balance(self, views: dict[str, InstanceView], busy, imbalanced: list[str]) -> list[Action]:
        """An instance holding too large a share of the flows gives a run of them to the one
        holding the fewest, towards an even split, within the target's pps."""
        actions = []
        for name in imbalanced:
            src = views.get(name)
            if src is None or name in busy or src.flows <= 0:
                continue
            others = [v for v in views.values() if v is not src and v.name not in busy]
            mean = sum(v.flows for v in views.values()) / len(views)

            def want(dst):
                want_flows = min(src.flows - mean, mean - dst.flows)
                if want_flows <= 0:
                    return None
                # in pps, the share of src's load those flows carry
                amount = src.pps * want_flows / src.flows
                return amount, max(max(0.0, self.target_pps - dst.pps), amount)
            got = self._place(src, others, lambda v: v.flows, want)
            if got:
                dst, run, _, cwhy = got
                actions.append(self.move(src, dst, run, f"{name} holds {src.flows} of "
                                          f"{sum(v.flows for v in views.values())} flows (imbalance); "
                                          f"{dst.name} holds {dst.flows}" + cwhy))
        return actions

    def move_off(self, victim: InstanceView, rest: list[InstanceView], why: str, limit: int) -> list[Action] | None:
        """Every run of victim's to the others, least loaded first (cluster-first: its cluster's
        first), each within the target; None if they cannot take it all."""
        moves = []
        while victim.blocks and len(moves) <= limit:
            runs = runs_of(victim)
            total = sum(b.pps for r in runs for b in r)
            # the largest prefix that fits a destination's room (all of it, if it fits)
            got = self._place(victim, rest, lambda v: v.pps, lambda d: (total, self.target_pps - d.pps), runs)
            if not got:
                return None              # the others cannot take it all: not now
            dst, part, _, cwhy = got
            moves.append(self.move(victim, dst, part, f"{why}: its flows go to {dst.name}{cwhy}"))
        return moves

    def _scale_in(self, views: dict[str, InstanceView], busy, want: int, under: list[str]) -> list[Action]:
        """One instance out: the underloaded, removable one with the least state; its runs go to
        the others, least loaded first, each within the target; removed once they all went."""
        cands = [views[n] for n in under if n in views and views[n].removable and n not in busy]
        if not cands:
            return []
        victim = min(cands, key=lambda v: (v.state_bytes, v.pps))
        rest = [v for v in views.values() if v is not victim and v.name not in busy]
        if not rest:
            return []
        moves = self.move_off(victim, rest, f"{want} instances carry {sum(v.pps for v in views.values()):,.0f} pps; "
                                            f"{victim.name} is underloaded", 4 * len(views) + 64)
        if moves is None or victim.flows > 0:
            return []                    # flows no run carries (a split block's) keep it
        return moves + [Action("remove", f"{victim.name} is empty after its flows moved", victim.name)]
