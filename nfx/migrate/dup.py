"""The duplication baseline SLiM is measured against (issue 12): during the move the ingress
switches duplicate the moving flows' packets to both instances, tagging each copy (the source's
and the destination's, by Ethernet source MAC: layout.dup_tag); the destination applies its
copies to its state with its output suppressed ("shadow") once the source's snapshot is in, and
the switches are repointed at the destination alone when it has caught up. Its agent half is
the sessions' src-dup and dst (dup) roles and move_dup_push (nfx/agent/dup_source.py); the
datapath's part is NFX_ACT_DUP_HOLD and the shadow exit (bpf/include/nfx_nf.h) and the switch's
tagged rules (bpf/switch.bpf.c).

lf, step by step:
1. dst buffers the flows (BUFFER marks from the source's keys, a BUFFER filter for new ones) and
   shadows tagged copies; src marks them DUP_HOLD: untagged packets are processed as usual, its
   tagged copies are held.
2. The switches duplicate, tagged (dup_on); then the IBC on each side, duplicated with the flow:
   at src it says every untagged packet of that side has been processed (the cut).
3. src's snapshot (read once both cuts are in) goes to dst; src lets its held copies go (processed
   for real, in order) and processes the later ones as they come (snapshot_sent, src_released).
4. dst installs the snapshot and drains: its copies, held and later, change its state and are
   dropped at its exit. Both instances have applied the same packets to the same state.
5. dst has caught up (caught_up): the switches send the flows to dst alone, untagged
   (repointed). Each switch port is a FIFO, so every copy precedes the first untagged packet at
   dst. An untagged IBC on each side then marks dst's last copy, and the move waits until src
   has received as many copies as dst did: nothing more reaches src, and the generic move ends
   both sessions and deletes the state at src.
ng: no hold and no cut at src (copies only): the snapshot is read while src goes on processing,
so dst's state may miss or double what src processed meanwhile; nothing is output twice.
op: src's last outputs and dst's first leave by two egress veths, which nothing orders. So dst
also holds its own (untagged) packets after the repoint (NFX_DUP_HOLD_OWN; its copies go on in
shadow) until src has received its last copy and its next hops have taken every frame it
output (its egress veths' rings are empty, as the releases' wait reads them: VethRing); then
they go, in order (move_dup_go).
A flow born during the move is processed at both, each instance picking what it picks: a NAT's
public port for it may differ between them."""
import time

from ..errors import NfxError
from ..movespec import ibc_keys, ibc_synthetic
from .mechanism import Ctx, Mechanism, spawn, wait_for

SETTLE_S = 0.002      # an XDP run that counted a packet is done with it


class Dup(Mechanism):
    name = "dup"
    passes_on = False          # the source keeps processing; the switches copy or repoint

    def cut(self, x: Ctx) -> None:
        """op's cut is run()'s: the destination's own packets went once the source's had left."""

    def run(self, x: Ctx) -> dict:
        src, dst, flt, steer, lf = x.src, x.dst, x.flt, x.steer, x.lf
        flows, outside = src.keys(flt)
        x.flows = len(flows)
        x.phase("keys")
        explicit = [] if flt.everything else list(outside)
        x.outside = None if flt.everything else list(outside)
        x.ibc = list(ibc_keys(flows, outside, flt))
        if not flt.everything and not any(bytes(k) not in {bytes(o) for o in outside} for k in flows):
            # no flow to take the cut's tuple from: a made-up one, marked and steered like a
            # public tuple (movespec.ibc_synthetic)
            synth = ibc_synthetic(flt)
            x.ibc = list(synth)
            explicit.append(synth[1][1])
            x.outside.append(synth[1][1])
        base_src, base_dst = src.stats(), dst.stats()
        try:
            return self._run(x, explicit, base_src, base_dst)
        except BaseException:
            if not lf and dst.session:
                # ng: the generic rollback ends lf sessions only
                try:
                    dst.end()
                except Exception:
                    try:
                        dst.force_end()      # its agent is gone: through its pins
                    except Exception:
                        pass
            raise

    def _run(self, x: Ctx, explicit: list, base_src: dict, base_dst: dict) -> dict:
        src, dst, flt, steer, lf, req = x.src, x.dst, x.flt, x.steer, x.lf, x.req
        x.progress("holding the flows at both ends")
        began = spawn(lambda: dst.begin("dst", x.epoch, False, explicit, flt, dup=True, hold_own=x.op))
        try:
            if lf:
                src.begin("src-dup", x.epoch, False, explicit, flt)
        finally:
            began()
        x.phase("held")
        x.progress("duplicating the flows to both instances")
        x.steered = True
        steer.point(flt, [src.name, dst.name], x.outside, tagged=True)
        x.phase("dup_on")
        if lf:
            steer.ibcs(x.ibc, x.epoch)
        x.t_state = time.perf_counter()
        # the source's agent waits for its cut (lf), then reads, releases and pushes
        pushed = src.dup_push(dst, x.epoch, flt, req.scopes, req.opts, req.timeout, req.data_link)
        if pushed.get("cut_at"):
            x.phases["src_cut"] = round((pushed["cut_at"] - x.t0) * 1e3, 2)     # stamped by the source
        x.state_at = pushed.get("applied_at") or time.perf_counter()
        x.phase("snapshot_sent")
        src_hold, own = {}, None
        if lf:
            wait_for(src.settled, req.timeout, "the source to release the copies it held")
            x.phase("src_released")
            st = src.move_stats()
            src_hold = {"held": st.get("buffered", 0), "max_hold_us": round(st.get("max_hold_us", 0.0), 1)}
        wait_for(dst.settled, req.timeout, "the destination to catch up (its buffer empty and released)")
        x.phase("caught_up")
        dst_st = dst.move_stats()
        x.progress("repointing the switches at the destination")
        steer.point(flt, [dst.name], x.outside)
        x.phase("repointed")
        # dst's last copy: the untagged IBC follows it on each side
        steer.ibcs(x.ibc, x.epoch)
        wait_for(dst.final_cut, req.timeout, "the IBC behind the destination's last copy")
        copies = _delta(dst.stats(), base_dst, "r_dup_copy_dst")
        try:
            wait_for(lambda: _delta(src.stats(), base_src, "r_dup_copy_src") >= copies, req.timeout,
                     f"the source to receive its copies ({copies}, as many as the destination)")
        except TimeoutError as e:
            got = _delta(src.stats(), base_src, "r_dup_copy_src")
            raise NfxError(f"{e}: it has {got}; a copy was lost on the way (switch r_sw_clone_fail?)") from None
        time.sleep(SETTLE_S)
        x.phase("copies_in")
        if x.op:
            # src's last outputs and dst's first leave by two veths: dst's wait until src's next
            # hops have taken all of src's (then a poll of theirs is done with them)
            wait_for(lambda: src.egress_fill() == 0, req.timeout, "the source's last outputs to leave")
            time.sleep(SETTLE_S)
            x.phase("src_flushed")
            dst.dup_go()
            x.phase("own_released")
            own = dst.move_stats().get("own_buffered", 0)
        after = dst.stats()
        if not lf:
            dst.end()
        return {"state_chunks": pushed.get("chunks", 0), "state_bytes": pushed.get("bytes", 0),
                "transfer_s": x.state_at - x.t_state,
                "dup": {"dst_copies": copies, "shadow_pkts": _delta(after, base_dst, "r_shadow"),
                        "shadow_bytes": _delta(after, base_dst, "r_shadow_bytes"),
                        "src_copies": _delta(src.stats(), base_src, "r_dup_copy_src"),
                        "snapshot_chunks": pushed.get("chunks", 0), "snapshot_bytes": pushed.get("bytes", 0),
                        "src_held": src_hold.get("held", 0), "src_max_hold_us": src_hold.get("max_hold_us", 0.0),
                        "dst_buffer_peak": dst_st.get("buffer_peak", 0),
                        "dst_max_hold_us": round(dst_st.get("max_hold_us", 0.0), 1),
                        **({"dst_own_held": own} if own is not None else {})},
                # the copies the destination shadowed crossed the wire as whole frames; the
                # agents' few control frames are not counted (SLiM's control bytes are)
                "bytes_on_wire": {"snapshot": pushed.get("bytes", 0),
                                  "duplicated": _delta(after, base_dst, "r_shadow_bytes"), "control": None,
                                  "total": pushed.get("bytes", 0) + _delta(after, base_dst, "r_shadow_bytes")}}


def _delta(now: dict, before: dict, key: str) -> int:
    return now.get(key, 0) - before.get(key, 0)
