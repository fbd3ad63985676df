"""Maintenance drain: one instance taken out of service and back, in three phases the loop plans
one round at a time (while a drain runs, the loop plans nothing else, so no other action
touches its instances):

    off      its runs of blocks move to the others, least loaded first (cluster-first: its
             cluster's first), each within the target; when the others lack the room, an
             instance is added first (up to max_instances); when even that is not enough,
             nothing moves and the plan's note says why
    upgrade  once it holds no movable flows: a hot upgrade of its program (`nfx nf upgrade`'s
             function; its agent restarted after), sampled again after
    back     the blocks it held when the drain began move back to it from wherever they are,
             within the larger of the target and the load it carried then (the same prefixes
             as they went, where they are still whole: their rules are replaced, no new switch
             slot)

A failed action is retried from what the instances then hold (the plan stops at it, as every
plan does). Each phase's plan has its kind (drain-off, drain-upgrade, drain-back) and each
action its reason, in the timeline and the decision log."""
from dataclasses import replace

from .plan import Action, InstanceView, Planner, runs_of


class Drain:
    def __init__(self, instance: str):
        self.instance = instance
        self.phase = "off"
        self.blocks: set[int] | None = None    # the blocks it held when the drain began
        self.pps_before = 0.0
        self.flows_before = 0
        self.note: str | None = None           # why this round planned nothing

    @property
    def done(self) -> bool:
        return self.phase == "done"

    def plan(self, planner: Planner, views: dict[str, InstanceView], spare: list[str],
             busy: set[str]) -> tuple[str, list[Action]]:
        """(the plan's kind, its actions) for this round; the phase moves on when its work is
        seen done in the views. Nothing while an instance it needs is cooling down."""
        self.note = None
        me = views.get(self.instance)
        if me is None:
            self.note = f"drain {self.instance}: it is not in service any more; the drain ends"
            self.phase = "done"
            return "drain", []
        if self.blocks is None:
            self.blocks, self.pps_before, self.flows_before = set(me.blocks), me.pps, me.flows
        if self.instance in busy:
            return "drain", []
        views = {n: replace(v, blocks=dict(v.blocks)) for n, v in views.items()}
        me = views[self.instance]
        if self.phase == "off":
            if me.blocks:
                return "drain-off", self._off(planner, views, me, spare, busy)
            self.phase = "upgrade"
        if self.phase == "upgrade":
            left = f"; {me.flows} flows in blocks shared with another instance stay" if me.flows else ""
            return "drain-upgrade", [Action("upgrade", f"drain {self.instance}: its flows are off "
                                            f"({self.flows_before} at the start){left}: hot upgrade of its program",
                                            self.instance)]
        if self.phase == "back":
            acts = self._back(planner, views, me, busy)
            if acts or self.note:
                return "drain-back", acts
            self.phase = "done"
        return "drain", []

    def upgraded(self, ok: bool) -> None:
        """The upgrade's outcome (the loop calls it from the action's record)."""
        if ok and self.phase == "upgrade":
            self.phase = "back"

    def _off(self, planner: Planner, views, me: InstanceView, spare: list[str], busy) -> list[Action]:
        rest = [v for v in views.values() if v is not me and v.name not in busy]
        room = sum(max(0.0, planner.target_pps - v.pps) for v in rest)
        acts = []
        if me.pps > room and len(views) < planner.policy.planner.max_instances and spare:
            name = spare[0]
            acts.append(Action("add", f"drain {self.instance}: its {me.pps:,.0f} pps do not fit the others' "
                                      f"{room:,.0f} pps of room below the target", name))
            new = InstanceView(name, 0.0)
            views[name] = new
            rest.append(new)
        why = f"drain {self.instance} (maintenance: off, hot upgrade, back)"
        moves = planner.move_off(me, rest, why, 4 * len(views) + 64)
        if not moves:
            self.note = (f"drain {self.instance}: the others cannot take its {me.pps:,.0f} pps within the target"
                         + ("" if len(views) < planner.policy.planner.max_instances else
                            f" and max_instances ({planner.policy.planner.max_instances}) is reached")
                         + (f"; {'; '.join(planner.notes)}" if planner.notes else ""))
            return []
        return acts + moves

    def _back(self, planner: Planner, views, me: InstanceView, busy) -> list[Action]:
        """Its old blocks back from each holder, the largest prefixes that fit first."""
        acts = []
        room_total = max(planner.target_pps, self.pps_before)
        for holder in sorted(views.values(), key=lambda v: v.name):
            if holder is me:
                continue
            mine = {i: b for i, b in holder.blocks.items() if i in self.blocks}
            if not mine:
                continue
            if holder.name in busy:
                self.note = f"drain {self.instance}: waiting for {holder.name} (an action touched it just now)"
                continue
            while True:
                runs = runs_of(replace(holder, blocks={i: b for i, b in holder.blocks.items() if i in self.blocks}))
                if not runs:
                    break
                room = room_total - me.pps
                run = planner.pick(holder, me, sum(b.pps for r in runs for b in r), room, runs)
                if not run:
                    self.note = (f"drain {self.instance}: {holder.name}'s share of its old flows does not fit its "
                                 f"{room:,.0f} pps of room" + (f"; {'; '.join(planner.notes)}" if planner.notes else ""))
                    break
                acts.append(planner.move(holder, me, run, f"drain {self.instance}: upgraded, its flows come back "
                                                           f"from {holder.name}"))
        return acts
