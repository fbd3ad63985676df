/* nfx_hold.h: the gate's hold FIFO. An instance whose held packets go in arrival order (SLiM's
 * destination, dup's source and destination: one path in) keeps them here instead of handing
 * them to its agent through the buffer ring; the release path's live test runs replay them
 * straight from these slots, so a held packet never passes through user space.
 *
 * Once the FIFO is full, the move's later packets spill to the buffer ring, all of them, so the
 * agent releases them after the FIFO's and arrival order holds.
 *
 * Any CPU may hold a packet: it reserves the next slot under the lock, fills it, and commits it
 * by writing the slot's sequence number last (x86 keeps stores in order, and the JIT keeps the
 * program's). The release path (one releaser at a time: its agent serialises) takes slots in
 * reservation order, waits at one not committed yet (the agent runs it again), and moves the
 * cursor only once it has copied the packet out, so a slot is never rewritten while read.
 * Layouts: nfx_move.h (nfx_hold_state, nfx_release_slot). */
#ifndef NFX_HOLD_H
#define NFX_HOLD_H

#include "nfx_bpf.h"
#include "nfx_move.h"

NFX_TABLE("array", __u32, struct nfx_release_slot, nfx_hold, NFX_HOLD_SLOTS);
NFX_TABLE("array", __u32, struct nfx_hold_state, nfx_hold_state, 1);

/* Hold the packet (arrived as `rx`) for move `epoch`: 0 held here; 1 not: the FIFO has filled
 * in this move, and this packet, like every later one of the move, goes to the buffer ring (its
 * agent releases those after the FIFO's, so arrival order holds); -1: its bytes could not be
 * read (its slot is committed empty, the caller counts the packet as not held). */
static __always_inline int nfx_hold_put(struct xdp_md *ctx, int side, __u32 rx, __u32 epoch)
{
    __u32 z = 0;
    struct nfx_hold_state *hs = nfx_hold_state.lookup(&z);
    if (!hs)
        return 1;
    __u64 len = bpf_xdp_get_buff_len(ctx);
    if (len > NFX_MAX_PKT)
        len = 0;                         /* cannot be stored: the ring path counts it */
    asm volatile("" : "+r"(len));        /* keep the verifier's bounds on this register */
    bpf_spin_lock(&hs->lock);
    if (hs->epoch != epoch) {            /* a new move: its own figures */
        hs->epoch = epoch;
        hs->peak = 0;
        hs->untagged = 0;
        hs->spilled = 0;
        hs->max_wait_ns = 0;
    }
    __u32 at = hs->head, depth = at - hs->cursor;
    int room = !hs->spilled && depth < NFX_HOLD_SLOTS && len;
    if (room) {
        hs->head = at + 1;
        if (depth + 1 > hs->peak)
            hs->peak = depth + 1;
        if (!(rx & NFX_RX_DUP_DST))
            hs->untagged++;
    } else {
        hs->spilled++;
    }
    bpf_spin_unlock(&hs->lock);
    if (!room)
        return 1;
    __u32 i = at % NFX_HOLD_SLOTS;
    struct nfx_release_slot *s = nfx_hold.lookup(&i);
    if (!s)
        return 1;                        /* cannot be: i is in range */
    if (len < 1 || bpf_xdp_load_bytes(ctx, 0, s->data, len))
        len = 0;                         /* committed empty: the release path skips it */
    s->len = len;
    s->side = side;
    s->rx = NFX_RX_RELEASED | (rx & NFX_RX_DUP_DST);   /* a dup copy: see nfx_hold_next */
    s->ts_ns = bpf_ktime_get_ns();
    s->epoch = epoch;
    asm volatile("" ::: "memory");
    s->seq = at + 1;
    return len ? 0 : -1;
}

/* The release path's next hold slot: the slot, or 0 with *wait set when it is reserved but not
 * committed yet, or when it is a dup op destination's own packet while its own packets wait
 * (NFX_DUP_HOLD_OWN: its copies ahead of it go, it and what follows wait); 0 alone: no hold
 * state. A slot of an earlier move comes back with *stale set: the caller skips it. The
 * caller copies the packet out (or skips it), then calls nfx_hold_done. */
static __always_inline struct nfx_release_slot *nfx_hold_next(struct nfx_move_cfg *mv, struct nfx_hold_state **hsp,
                                                              int *wait, int *stale)
{
    __u32 z = 0;
    struct nfx_hold_state *hs = nfx_hold_state.lookup(&z);
    *hsp = hs;
    *wait = 0;
    *stale = 0;
    if (!hs)
        return 0;
    __u32 n = hs->cursor, i = n % NFX_HOLD_SLOTS;
    struct nfx_release_slot *s = nfx_hold.lookup(&i);
    if (!s)
        return 0;
    if (s->seq != n + 1 || ((mv->dup & NFX_DUP_HOLD_OWN) && !(s->rx & NFX_RX_DUP_DST))) {
        *wait = 1;
        return 0;
    }
    *stale = s->epoch != mv->epoch;
    return s;
}

static __always_inline void nfx_hold_done(struct nfx_hold_state *hs, struct nfx_release_slot *s, int released)
{
    __u64 waited = bpf_ktime_get_ns() - s->ts_ns;
    if (released && waited > hs->max_wait_ns)
        hs->max_wait_ns = waited;
    hs->cursor += 1;                     /* only now may the slot be reserved again */
}

#endif /* NFX_HOLD_H */
