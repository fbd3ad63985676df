"""OpenNF's controller side: the controller begins the move at both instances, takes the state
from src and puts it to dst, holds what src sends up meanwhile (ControllerBuffer), hands it to
dst, then steers. Its agent half is the sessions' src-ctrl and dst roles (nfx/agent)."""
import base64
import time

from ..movespec import ibc_keys, ibc_synthetic, spread_keys
from .. import packets as pk
from ..agent.share import cluster_figures
from ..errors import NfxError
from .ctrlbuf import ControllerBuffer
from .mechanism import Ctx, Mechanism, by_key, cluster_report, inside_cluster, spawn, steer_to_dst, wait_for


class OpenNF(Mechanism):
    name = "opennf"

    def run(self, x: Ctx) -> dict:
        src, dst, flt, op, lf = x.src, x.dst, x.flt, x.op, x.lf
        ll = "ll" in x.req.opts
        if lf:
            x.ctrl = ControllerBuffer(op)
        explicit: list = []
        synth = None
        # a spread testbed: the filter also matches flows other instances hold (dst's own among
        # them), so the move holds and cuts its flows by key, never by the filter
        spread = getattr(src, "spread", False)
        by_flt = None if spread else flt
        if not flt.everything or spread:
            # a partial filter cannot see a NAT's public tuples: they are marked explicitly
            flows, outside = src.keys(flt)
            # spread: the flows' own keys (an IDS's both directions: movespec.spread_keys)
            explicit = spread_keys(flows, outside) if spread else outside
            x.phase("keys")
            if op and not any(bytes(k) not in {bytes(o) for o in outside} for k in flows):
                # nothing to take the cut's tuple from: one made from the filter, whose outside
                # tuple is marked and steered like a public tuple (ibc_synthetic)
                synth = ibc_synthetic(flt)
                explicit = explicit + [synth[1][1]] + ([synth[0][1]] if spread else [])
        if lf:
            x.progress("holding the flows back")
            # the two requests at once, each waiting for its own round trip
            began = spawn(lambda: dst.begin("dst", x.epoch, op, explicit if op else [], by_flt if op else None))
            src.begin("src-ctrl", x.epoch, op, ([] if ll else explicit) + ([synth[1][1]] if synth and ll else []),
                      None if ll else by_flt, on_ctrl=x.ctrl.take)
            began()
            x.phase("held")
        x.t_state = time.perf_counter()
        time.sleep(x.req.state_delay_s)     # emulated: a slower state transfer (bench sharp, Fig. 7)
        inside = inside_cluster(x)
        chunks, nbytes, applied_at, cluster = (_transfer_inside if inside else _transfer)(x)
        if spread and lf and not ll:
            # the move's flows are those held since the start. One born at src after src.keys()
            # was not held (the transfer may carry a copy of its state): steered to dst by key
            # it would be processed at both in phase 1 (duplicates) and at dst without src's
            # updates since the copy. It stays at src, where the spread sends it.
            _learn(x, flows, outside)
        if synth:
            x.ibc = list(synth)
            if x.outside is not None:
                x.outside = x.outside + [synth[1][1]]
            if x.keys is not None:
                x.keys = by_key(x.keys, [], x.ibc)
        x.state_at = applied_at or time.perf_counter()
        x.phase("state")
        if lf and not op:
            x.ctrl.release(dst)
        x.progress("steering the switches")
        steer_to_dst(x)
        x.phase("steered")
        out = {"state_chunks": chunks, "state_bytes": nbytes, "transfer_s": x.state_at - x.t_state}
        cl = cluster_report(x, inside, cluster)
        if cl:
            out["cluster"] = cl
        return out

    def cut(self, x: Ctx) -> None:
        """The source sent its IBC up to the controller: what it sent before goes to dst first."""
        wait_for(x.ctrl.cut_complete, x.req.timeout, "the source's IBC at the controller")
        x.ctrl.release(x.dst)
        x.ctrl.flush(x.req.timeout)
        x.dst.drain()


def _transfer_inside(x: Ctx) -> tuple[int, int, float | None, dict]:
    """A move inside a cluster whose members share in batches (issue 13): the source sends each
    flow's pending batch (what changed since its last one) to every member, then dst writes the
    moved flows from its replicas into its maps. Only the last batch crosses during the move."""
    src, dst, flt = x.src, x.dst, x.flt
    sent = src.share_flush(flt)
    if sent.get("errors"):
        raise NfxError(f"{src.name}'s batches to {', '.join(sent['errors'])} failed ({next(iter(sent['errors'].values()))}): "
                       "their replicas are incomplete; the move is called off")
    got = dst.replica_promote(flt, src.name, sent["keys"])
    if got.get("failed"):
        raise NfxError(f"{dst.name} could not write the replicas of {len(got['failed'])} chunks: {got['failed'][0]}")
    _learn(x, pk.keys_from_blob(_raw(got["flows"])), pk.keys_from_blob(_raw(got["outside"])))
    return len(got.get("applied") or []), sent["bytes"], got.get("applied_at"), cluster_figures(sent, got)


def _learn(x: Ctx, flows: list, outside: list) -> None:
    """What the moved state says for the rest of the move: the flows, a NAT's public tuples, the
    IBCs' tuples (op) and, on a spread testbed, the keys the switches are pointed by."""
    x.flows = len(flows)
    x.outside = None if x.flt.everything else outside
    if x.op:
        x.ibc = list(ibc_keys(flows, outside, x.flt))
    if getattr(x.src, "spread", False):
        x.keys = by_key(spread_keys(flows, outside), [], x.ibc)


def _raw(b64: str | None) -> bytes:
    return base64.b64decode(b64) if b64 else b""


def _transfer(x: Ctx) -> tuple[int, int, float | None, dict]:
    """The state through the controller. pz: each chunk is put as it comes from src (puts
    pipelined), else all out, then all in. ll: src holds flows back group by group as it reads
    their state. er: a chunk's flows are let go (to dst) as soon as dst has applied it. The
    chunks also tell the controller the flows' keys (the IBC's, a NAT's public tuples)."""
    src, dst, flt, opts = x.src, x.dst, x.flt, x.req.opts
    er = "er" in opts and x.lf
    ll = "ll" in opts and x.lf
    chunks: list = []

    def applied(r, cs):
        if er:
            for c in cs:
                _early(dst, x.ctrl, c)
    exported = src.export(x.req.scopes, flt, ll=ll, peer=dst.name)

    def kept():
        for c in exported:
            chunks.append(c)
            yield c
    try:
        sent = dst.send_state(kept(), "pz" in opts, applied)
    finally:
        exported.close()          # lets go of src's connection even if dst failed half way
    _learn(x, *pk.flow_keys(chunks))
    return sent["chunks"], sent["bytes"], sent["applied_at"], {"entries": sent["entries"]}


def _early(dst, ctrl, c) -> None:
    keys = pk.flow_keys([c])[0]
    if not keys:
        return
    if ctrl is not None:
        ctrl.release(dst, keys)
    else:
        dst.drain(keys)
