/* nfx_release.h: what the gate holds back and how it lets it go. A held packet goes to the agent
 * through the buffer ring, or stays in the gate's hold FIFO (nfx_hold.h); the release path replays
 * either through the program. With them, the move this instance takes part in: its config (the
 * agent writes it) and its state (this program writes it). Layouts: nfx_move.h. */
#ifndef NFX_RELEASE_H
#define NFX_RELEASE_H

#include "nfx_bpf.h"
#include "nfx_move.h"
#include "nfx_hold.h"

#ifndef NFX_PKTBUF_PAGES
#define NFX_PKTBUF_PAGES 16384          /* 64 MiB: about 40k full-size packets in flight */
#endif

/* the move this instance takes part in (its agent writes the config, this program the state),
 * the release slots, and the buffer ring */
NFX_TABLE("array", __u32, struct nfx_move_cfg, nfx_move_cfg, 1);
NFX_TABLE("array", __u32, struct nfx_move_state, nfx_move_state, 1);
NFX_TABLE("array", __u32, struct nfx_release_slot, nfx_release, NFX_RELEASE_SLOTS);
NFX_RING(nfx_pktbuf, NFX_PKTBUF_PAGES);

struct nfx_buf_rec {
    struct nfx_buf_hdr h;
    __u8 data[NFX_MAX_PKT];
};
BPF_PERCPU_ARRAY(nfx_bufscratch, struct nfx_buf_rec, 1);

/* The release path: a live test run naming the release veth as ingress replays, one per frame,
 * the agent's release slots, or (move_cfg.hold) the gate's hold FIFO, through this same
 * program. Returns the packet's side, -1 for a slot that was empty or malformed (skipped), -2
 * for a hold slot not committed yet (left for the next run), -3 for an earlier move's held
 * packet (skipped). */
static __always_inline int nfx_release_load(struct xdp_md *ctx, __u32 *rx, __u32 *seq)
{
    __u32 z = 0;
    struct nfx_move_state *ms = nfx_move_state.lookup(&z);
    struct nfx_move_cfg *mv = nfx_move_cfg.lookup(&z);
    if (!ms || !mv)
        return -1;
    struct nfx_hold_state *hs = 0;
    struct nfx_release_slot *s = 0;
    int stale = 0;
    if (mv->hold) {
        int wait = 0;
        s = nfx_hold_next(mv, &hs, &wait, &stale);
        if (wait)
            return -2;
    } else {
        __u32 n = ms->release_cursor;
        ms->release_cursor = n + 1;      /* one releaser at a time: the agent serialises */
        __u32 i = n % NFX_RELEASE_SLOTS;
        s = nfx_release.lookup(&i);
    }
    if (!s)
        return -1;
    int side = -1;
    __u64 len = s->len;
    if (len > NFX_MAX_PKT)
        len = 0;
    asm volatile("" : "+r"(len));        /* keep the verifier's bounds on this register */
    if (len >= sizeof(struct ethhdr) && !stale) {
        int cur = bpf_xdp_get_buff_len(ctx);
        if (!bpf_xdp_adjust_tail(ctx, (int)len - cur) && !bpf_xdp_store_bytes(ctx, 0, s->data, len))
            side = s->side & 1;
    }
    if (hs)
        nfx_hold_done(hs, s, side >= 0); /* copied out (or skipped): the slot may be reused */
    if (side < 0)
        return stale ? -3 : -1;
    *rx = s->rx & (NFX_RX_RELEASED | NFX_RX_INJECTED);
    *seq = ++ms->release_seq;
    nfx_count(*rx & NFX_RX_RELEASED ? NFX_R_RELEASED : NFX_R_INJECTED);
    return side;
}

/* Copy the packet into the buffer ring (for the agent), behind a header. */
static __always_inline int nfx_buffer(struct xdp_md *ctx, struct nfx_flow_key *k, __u32 kind, int side,
                                      __u32 rx, __u32 epoch)
{
    __u32 z = 0;
    struct nfx_buf_rec *r = nfx_bufscratch.lookup(&z);
    if (!r)
        return -1;
    __u64 len = bpf_xdp_get_buff_len(ctx);
    if (len > NFX_MAX_PKT)
        return -1;
    asm volatile("" : "+r"(len));
    if (len < 1)
        return -1;
    r->h.ts_ns = bpf_ktime_get_ns();
    r->h.key = *k;
    r->h.len = len;
    r->h.epoch = epoch;
    r->h.kind = kind;
    r->h.side = side;
    r->h.rx = rx;
    if (bpf_xdp_load_bytes(ctx, 0, r->data, len))
        return -1;
    return nfx_pktbuf.ringbuf_output(r, sizeof(struct nfx_buf_hdr) + len, 0);
}

#endif /* NFX_RELEASE_H */
