"""SHarP handovers at the controller (POST /handover, `nfx handover`, `nfx move --mechanism
sharp`): several at once, each on its own thread (nfx/migrate/sharp.py runs one).

- Handovers that share no instance run side by side. An instance's gate takes part in one move
  at a time, so those that share one wait; among the waiting, the higher priority r starts first.
- A higher r overrides a lower one where their filters overlap, whatever the order they finish
  in: a finished handover's forward entry (2r+0, in the handover band above every move) stays
  while a handover of lower r that overlaps it is still running or waiting, and the finished
  ones become move-band rules (`point`, where the newest wins) in order of r, lowest first.
- The sources are the instances the filter's flows reach when it starts, by the rules below its
  own entries: what a higher handover holds is not its to take."""
import json
import logging
import threading
import time

from ..errors import BadInput
from ..filter import parse
from ..movespec import new_epoch
from ..migrate.endpoint import Remote, end_session
from ..migrate.sharp import Handover, HandoverRequest
from ..state.tables import parse_scopes
from ..procs.controller import moves_path
from .. import registry
from .sharp_plane import MAX_PRIORITY, Plane, filter_overlap, prio


log = logging.getLogger("nfx.controller")


class Handovers:
    def __init__(self, ctl):
        self.ctl = ctl
        self.plane: Plane | None = None
        self.cv = threading.Condition()
        self.waiting: list[dict] = []        # {"req", "instances", "seq"}
        self.running: dict[int, dict] = {}   # epoch -> {"req", "instances"}
        self.finished: list[Handover] = []   # forward entries not yet turned into move rules
        self.seq = 0
        self.done = 0

    def request(self, body: dict) -> HandoverRequest:
        nfs = self.ctl.instances()
        try:
            r = int(body.get("priority", 0))
        except (TypeError, ValueError):
            raise BadInput(f"priority must be an integer, not {body.get('priority')!r}") from None
        if not 0 <= r <= MAX_PRIORITY:
            raise BadInput(f"priority {r} out of range 0..{MAX_PRIORITY}")
        try:
            req = HandoverRequest(filter=parse(body.get("filter")), priority=r, dst=body.get("dst"),
                                  scopes=parse_scopes(body.get("scopes")),
                                  max_silence_s=float(body.get("max_silence_ms", 10)) / 1e3,
                                  timeout=float(body.get("timeout", 30)),
                                  state_delay_s=float(body.get("state_delay_ms", 0)) / 1e3)
        except (TypeError, ValueError) as e:
            raise BadInput(f"bad handover request: {e}") from None
        req.check(nfs)
        return req

    def run(self, body: dict, progress=lambda m: None) -> dict:
        req = self.request(body)
        with self.cv:
            if self.plane is None:
                self.plane = Plane(self.ctl.steer)
            below = prio(req.priority, False)
            srcs = sorted(self.plane.sources(req.filter, below) - {req.dst})
            named = body.get("src")
            if named is not None and named not in srcs:
                raise BadInput(f"the filter's flows go to {', '.join(srcs) or 'no instance but ' + req.dst} today, "
                               f"not {named}: SHarP finds the source itself (leave --from out)")
            if not srcs:
                raise BadInput(f"the filter's flows go to {req.dst} already: nothing to hand over")
            me = {"req": req, "instances": set(srcs) | {req.dst}, "seq": self.seq}
            self.seq += 1
            self.waiting.append(me)
            self.cv.wait_for(lambda: self._may_start(me), timeout=req.timeout)
            if me not in self.waiting or not self._may_start(me):
                self._drop(me)
                raise BadInput(f"instances {', '.join(sorted(me['instances']))} stayed busy for {req.timeout:g} s")
            self.waiting.remove(me)
            # the sources again: a handover that finished while this one waited changed them
            srcs = sorted(self.plane.sources(req.filter, below) - {req.dst})
            if not srcs:
                self.cv.notify_all()
                raise BadInput(f"the filter's flows went to {req.dst} meanwhile: nothing to hand over")
            epoch = new_epoch()
            me["instances"] = set(srcs) | {req.dst}
            self.running[epoch] = me
        h = Handover(req, self.plane, srcs, epoch, progress, self._outside(req, srcs))
        try:
            out = h.run()
        except BaseException:
            # the switches are back (Handover's rollback); the destination lets go of what it held
            rec = registry.load(self.ctl.testbed)
            try:
                end_session(rec, req.dst)
            except Exception as e:
                log.warning("handover %d: clearing %s's move settings failed: %s", epoch, req.dst, e)
            raise
        finally:
            with self.cv:
                self.running.pop(epoch, None)
                # a failed one may have been what kept a finished one's entry up
                self._settle_forwarding()
                self.cv.notify_all()
        with self.cv:
            self.finished.append(h)
            self._settle_forwarding()
            self.done += 1
            self.cv.notify_all()
        out.update(testbed=self.ctl.testbed, at=time.time())
        with open(moves_path(self.ctl.testbed), "a") as f:
            f.write(json.dumps(out) + "\n")
        return out

    def _outside(self, req: HandoverRequest, srcs: list[str]) -> list | None:
        """A NAT's public tuples of a partial filter's flows, from the sources (None: the
        filter reversed matches the return traffic: filter all, or an NF that does not translate)."""
        if req.filter.everything or self.ctl.rec["nodes"][req.dst].get("kind") != "nat":
            return None
        rec = registry.load(self.ctl.testbed)
        out = []
        for src in srcs:
            r = Remote(rec, src)
            try:
                out += r.keys(req.filter)[1]
            finally:
                r.close()
        return out

    def _drop(self, me) -> None:
        if me in self.waiting:
            self.waiting.remove(me)
        self.cv.notify_all()

    def _may_start(self, me) -> bool:
        busy = set().union(*(x["instances"] for x in self.running.values()))
        if me["instances"] & busy:
            return False
        # a waiting request that shares an instance and has a higher r (or the same r, earlier) goes first
        return not any(o is not me and o["instances"] & me["instances"]
                       and (o["req"].priority, -o["seq"]) > (me["req"].priority, -me["seq"]) for o in self.waiting)

    def _settle_forwarding(self) -> None:
        """Finished handovers' forward entries become move-band rules, lowest r first, once no
        running or waiting handover of lower r overlaps them (until then they override it)."""
        active = [x["req"] for x in self.running.values()] + [x["req"] for x in self.waiting]
        for h in sorted(self.finished, key=lambda h: h.req.priority):
            if any(a.priority < h.req.priority and filter_overlap(a.filter, h.req.filter) for a in active):
                break          # keeps its entry, and so do those of higher r behind it
            self.plane.point(h.req.filter, [h.req.dst], h.outside)
            for sw, rid in h.forward_entries():
                self.plane.remove(sw, rid)
            self.finished.remove(h)

    def status(self) -> dict:
        with self.cv:
            return {"running": [{"epoch": e, "filter": x["req"].filter.text, "priority": x["req"].priority,
                                 "dst": x["req"].dst} for e, x in self.running.items()],
                    "waiting": [{"filter": x["req"].filter.text, "priority": x["req"].priority, "dst": x["req"].dst}
                                for x in self.waiting],
                    "overriding": [{"filter": h.req.filter.text, "priority": h.req.priority, "dst": h.req.dst}
                                   for h in self.finished],
                    "done": self.done}

    def close(self) -> None:
        if self.plane is not None:
            self.plane.close()
