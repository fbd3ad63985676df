"""An instance the cluster failed over from, back (issue 14): rejoin, then sync-gated failback.

rejoin {instance}     its agent runs again and its program is attached (nfx cluster rejoin did
                      that); it is still fenced (the drop filter is in its pinned maps). It
                      becomes the secondary of a slot that has none, or a spare: as a secondary
                      it shares with the slot's primary, whose base snapshot it takes first (the
                      sync), while traffic runs.
failback {slot, to}   the slot back to `to`, only if `to` is the slot's secondary and holds a
                      base of the primary's state (never before): its fence is lifted (it still
                      gets no packet: the switches follow the record), the record names it
                      primary by transaction, and an order-preserving move inside the cluster
                      carries the primary's flows with their last batches and steers the
                      switches. A move that fails puts the record back."""
import time

from .. import registry
from ..agent.client import AgentClient
from ..errors import BadInput, NfxError
from ..gate import Gate
from ..nfs import open_node


def rejoin(fo, inst: str) -> dict:
    if inst not in registry.load(fo.testbed).instances():
        raise BadInput(f"no NF instance {inst!r} in testbed {fo.testbed}")
    with fo.lock:
        serving = {s["primary"] for s in fo.slots.values()} | {s["secondary"] for s in fo.slots.values()}
        if inst in serving or inst in fo.spares:
            raise BadInput(f"{inst} is in a pair or a spare already")
        slot = next((k for k, s in fo.slots.items() if not s["secondary"]), None)
    fo.last_seen.pop(inst, None)          # watched again from its first beat
    fo.beat_request(inst, fo.addr)
    if slot is None:
        with fo.lock:
            fo.spares.append(inst)
        return {"instance": inst, "role": "spare", "fenced": Gate(open_node(registry.load(fo.testbed).nf(inst))).fenced()}
    t0 = time.perf_counter()
    primary = fo.slots[slot]["primary"]
    fo.share_pair(primary, inst)
    if fo.gs.set_secondary(slot, primary, inst) is None:
        raise NfxError(f"pair {slot}'s record changed meanwhile: {inst} shares with {primary} but stands by for no one")
    with fo.lock:
        fo.slots[slot]["secondary"] = inst
    fo.record(slot, None, primary, inst)
    fo.refresh()
    return {"instance": inst, "role": "secondary", "slot": slot, "primary": primary,
            "sync_s": round(time.perf_counter() - t0, 3),
            "fenced": Gate(open_node(registry.load(fo.testbed).nf(inst))).fenced()}


def synced(fo, inst: str, primary: str) -> dict:
    """Whether `inst` holds a base of `primary`'s state, and shares with it."""
    with AgentClient(fo.testbed, inst, timeout=10.0) as a:
        st = a.request("share_status")
    sharing = st.get("sharing") or {}
    based = (st.get("replicas") or {}).get("based") or {}
    return {"synced": primary in based and primary in (sharing.get("members") or ()),
            "based_at": based.get(primary), "shares_with": sharing.get("members")}


def failback(fo, slot: str, to: str, mechanism: str = "dist") -> dict:
    with fo.lock:
        s = fo.slots.get(slot)
        if s is None:
            raise BadInput(f"no pair {slot!r}: pairs are {', '.join(fo.slots)}")
        primary = s["primary"]
        if to == primary:
            raise BadInput(f"{to} serves pair {slot} already")
        if s["secondary"] != to:
            raise BadInput(f"{to} is not pair {slot}'s secondary ({s['secondary'] or 'none'}): "
                           f"it takes traffic back only once it has synced as one", hint=f"nfx cluster rejoin --instance {to}")
    sync = synced(fo, to, primary)
    if not sync["synced"]:
        raise BadInput(f"{to} has not synced with {primary} (no base of its state): no failback before")
    with fo.lock:
        if slot in fo.planned or primary in fo.failing:
            raise BadInput(f"pair {slot} is changing already")
        fo.planned.add(slot)
    try:
        return _failback(fo, slot, primary, to, sync, mechanism)
    finally:
        with fo.lock:
            fo.planned.discard(slot)
        now = time.monotonic()
        for inst in (primary, to):
            fo.last_seen[inst] = max(fo.last_seen.get(inst, now), now)   # watched afresh from here


def _failback(fo, slot: str, primary: str, to: str, sync: dict, mechanism: str) -> dict:
    if not fo.gs.swap_primary(slot, primary, to):      # reads the record and compares it in one step
        raise NfxError(f"pair {slot}'s record changed meanwhile")
    t0 = time.perf_counter()
    Gate(open_node(registry.load(fo.testbed).nf(to))).unfence()
    with fo.lock:
        fo.slots[slot] = {"primary": to, "secondary": primary}
        fo.fenced.discard(to)
    try:
        move = fo.ctl.move({"src": primary, "dst": to, "filter": "all", "guarantee": "op", "mechanism": mechanism,
                            "scopes": "per-flow,multi-flow", "wait": 30})
    except BaseException:
        # the record and the fence as they were: `to` takes no traffic it has no state for
        fo.gs.swap_primary(slot, to, primary)
        Gate(open_node(registry.load(fo.testbed).nf(to))).fence()
        with fo.lock:
            fo.slots[slot] = {"primary": primary, "secondary": to}
            fo.fenced.add(to)
        raise
    fo.record(slot, None, to, primary)
    fo.refresh()
    return {"slot": slot, "primary": to, "secondary": primary, "synced_at": sync["based_at"],
            "failback_s": round(time.perf_counter() - t0, 3),
            "move": {k: move.get(k) for k in ("mechanism", "guarantee", "total_s", "state_bytes", "cluster")}}
