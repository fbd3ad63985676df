/* nfx_nf.h: what every NF program runs around its own logic: the gate (per-flow marks, then
 * wildcard filters for flows with no mark), moves, and the wiring that forwards a packet out the
 * other side; statelets are written by nfx_st_write.h, dup's tagged copies told apart by
 * nfx_dup.h, held packets kept and let go by nfx_release.h, the stamper's trailer taken off and
 * put back by nfx_stamp.h, the time read by nfx_clock.h. Layouts are in nfx_gate.h, nfx_move.h
 * and nfx_statelet.h. */
#ifndef NFX_NF_H
#define NFX_NF_H

#include "nfx_bpf.h"
#include "nfx_gate.h"
#include "nfx_move.h"
#include "nfx_hsl.h"
#include "nfx_st_write.h"
#include "nfx_dup.h"
#include "nfx_release.h"
#include "nfx_stamp.h"
#include "nfx_clock.h"

#ifndef NFX_MAX_FLOWS
#define NFX_MAX_FLOWS 262144
#endif

NFX_TABLE("hash", struct nfx_flow_key, struct nfx_mark, nfx_marks, NFX_MAX_FLOWS);
NFX_TABLE("array", __u32, struct nfx_filter, nfx_filters, NFX_MAX_FILTERS);
NFX_TABLE("array", __u32, struct nfx_gate_cfg, nfx_gate_cfg, 1);
NFX_TABLE("array", __u32, struct nfx_port_cfg, nfx_port_cfg, 1);
BPF_DEVMAP(nfx_tx, NFX_TX_SLOTS);

/* The scratch record of a packet the NF mirrors (nfx_st_begin, nfx_st_write.h). Its record
 * starts with its STAMP statelet when the gate shares state or the packet came stamped
 * (nfx_statelet.h): the flow key as the gate saw it and the stamp (0: none). Here, not in
 * nfx_stamp.h: it reads nfx_gate_cfg. */
static __always_inline struct nfx_st *nfx_st_begin_pkt(struct nfx_pkt *p)
{
    struct nfx_st *s = nfx_st_begin();
    if (!s)
        return s;
    /* shared: the record goes out at the flow's batch boundary (a stamp that is a multiple of
     * share_batch, or none) or if the packet makes or ends an entry (nfx_st_keep). Read here and
     * kept in map memory, unknown to the verifier: one walk of the NF, not one per case */
    if (p->shared) {
        __u32 z = 0;
        struct nfx_gate_cfg *g = nfx_gate_cfg.lookup(&z);
        if (g && g->share_batch)
            s->keep = p->stamp % g->share_batch == 0;
    }
    if (!(p->stamped | p->shared))
        return s;
    int h = nfx_st_open(s);
    if (h < 0)
        return s;
    nfx_st_flow(s, &p->key);
    nfx_st_word(s, p->stamp);
    nfx_st_close(s, h, NFX_ST_STAMP, NFX_ST_SET, 2, NFX_ST_BIT(NFX_STF_VALUE), 0);
    return s;
}


static __always_inline int nfx_filter_match(struct nfx_filter *f, struct nfx_flow_key *k, int swap)
{
    __u32 s = swap ? k->daddr : k->saddr, d = swap ? k->saddr : k->daddr;
    __u16 sp = swap ? k->dport : k->sport, dp = swap ? k->sport : k->dport;
    return ((s & f->smask) == f->saddr) && ((d & f->dmask) == f->daddr) &&
           (!f->sport || f->sport == sp) && (!f->dport || f->dport == dp) &&
           (!f->proto || f->proto == k->proto);
}

NFX_TABLE("hash", struct nfx_flow_key, __u32, nfx_drain, NFX_MAX_FLOWS);   /* early release, per flow */

#define NFX_ACT_PRE_IBC 100     /* internal: an OP switch-path packet that precedes the IBC */
#define NFX_PEER_MAC4   0xfe    /* peer-link frames: dst MAC 02:00:00:00:fe:<side> */

/* Which side a packet belongs to (-1: not ours; -2: a release run's frame with no packet,
 * counted) and how it arrived. */
static __always_inline int nfx_rx(struct xdp_md *ctx, struct nfx_port_cfg *pc, __u32 *rx, __u32 *seq)
{
    __u32 ifi = ctx->ingress_ifindex;
    *rx = 0;
    *seq = 0;
    if (ifi == pc->ifindex[NFX_SIDE_IN])
        return NFX_SIDE_IN;
    if (ifi == pc->ifindex[NFX_SIDE_OUT])
        return NFX_SIDE_OUT;
    if (!ifi)
        return -1;
    if (ifi == pc->release_ifindex) {
        int side = nfx_release_load(ctx, rx, seq);
        if (side < 0) {
            nfx_count(side == -2 ? NFX_R_RELEASE_WAIT : side == -3 ? NFX_R_HOLD_STALE : NFX_R_RELEASE_BAD);
            side = -2;
        }
        return side;
    }
#pragma unroll
    for (int i = 2; i < NFX_TX_SLOTS; i++) {
        if (ifi == pc->peer_ifindex[i]) {
            void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
            struct ethhdr *eth = data;
            if ((void *)(eth + 1) > end)
                return -1;
            *rx = NFX_RX_PEER;
            nfx_count(NFX_R_FROM_PEER);
            return eth->h_dest[5] & 1;   /* the side the packet first arrived on */
        }
    }
    return -1;
}

/* The flow's action: its per-flow mark if it has one, else the first matching filter, else
 * PROCESS. Marks count buffered and released packets under the mark's lock; a BUFFER mark
 * flips to PROCESS only when its agent has started draining it, all its buffered packets have
 * been released, and the last of them has left the NF (flushed_seq): so a live packet never
 * overtakes a buffered one. `*mp` is the mark, for the caller to undo a failed buffering. */
static __always_inline __u32 nfx_gate(struct nfx_flow_key *k, int side, __u32 rx, __u32 seq, __u32 *peer,
                                      struct nfx_mark **mp, struct nfx_move_cfg *mv, struct nfx_gate_cfg *g)
{
    __u32 z = 0;
    __u32 act = NFX_ACT_PROCESS;
    *mp = 0;
    if (!g || (!g->marks && !g->filters))
        return act;                      /* no move, no filter: nothing below could say otherwise */
    struct nfx_move_state *ms = nfx_move_state.lookup(&z);
    if (!mv || !ms)
        return act;
    if (rx & NFX_RX_INJECTED)
        return act;
    struct nfx_mark *m = g->marks ? nfx_marks.lookup(k) : 0;
    if (!m) {
        if (rx & NFX_RX_RELEASED)
            return act;                  /* the move was called off: just process it */
        __u32 nf = g->filters;
        __u32 epoch = 0;
        /* a bounded loop, not unrolled: its early exit on a runtime count defeats LLVM's unroller */
        for (__u32 i = 0; i < NFX_MAX_FILTERS; i++) {
            if (i >= nf)
                break;
            __u32 slot = i;
            struct nfx_filter *f = nfx_filters.lookup(&slot);
            if (!f || !(f->flags & NFX_FILTER_USED))
                continue;
            if (nfx_filter_match(f, k, 0) || ((f->flags & NFX_FILTER_BIDIR) && nfx_filter_match(f, k, 1))) {
                *peer = f->peer;
                act = f->action;
                epoch = f->tag;          /* a filter's tag is the move epoch of the marks it makes */
                break;
            }
        }
        /* SLiM's source (its filter catches the flows): after this side's IBC the destination
         * has the flow's packets (the switch duplicates until it points at the destination
         * alone), so processing them here would mirror them twice */
        if (act == NFX_ACT_STATELET && epoch && epoch == mv->epoch && mv->op && ms->ibc_switch[side & 1])
            return NFX_ACT_PRE_IBC;
        if (act != NFX_ACT_BUFFER && act != NFX_ACT_DUP_HOLD)
            return act;
        /* a flow first seen while a BUFFER (or DUP_HOLD) filter is up gets its own mark, so its
         * packets are counted like those of the flows that existed when the move began */
        g->marks = 1;                    /* from now on the gate looks marks up */
        struct nfx_mark nm = {};
        nm.action = act;
        nm.peer = *peer;
        nm.epoch = epoch;
        nfx_marks.insert(k, &nm);        /* another CPU may have won: use whichever is there */
        m = nfx_marks.lookup(k);
        if (!m)
            return NFX_ACT_DROP;
    }
    __u32 drain = mv->drain_epoch, flushed = mv->flushed_seq;
    /* order-preserving move (DiST's two-phase update), per side: the switch's IBC and the
     * source's IBC each cut a FIFO stream, so these decisions are exact */
    __u32 op = mv->op && m->epoch == mv->epoch;
    __u32 from_peer = rx & NFX_RX_PEER;
    __u32 cut_switch = ms->ibc_switch[side & 1], cut_peer = ms->ibc_peer[side & 1] || mv->peer_cut;
    __u32 early = 0;
    if (!(rx & NFX_RX_RELEASED) && m->action == NFX_ACT_BUFFER && nfx_drain.lookup(k))
        early = 1;
    bpf_spin_lock(&m->lock);
    if (rx & NFX_RX_RELEASED) {
        m->released++;
        m->last_release = seq;
        act = NFX_ACT_PROCESS;
    } else {
        if ((m->action == NFX_ACT_BUFFER || m->action == NFX_ACT_DUP_HOLD) &&
            ((m->epoch && m->epoch == drain) || early) &&
            m->released == m->buffered && m->last_release <= flushed)
            m->action = NFX_ACT_PROCESS;
        act = m->action;
        if (op && act == NFX_ACT_STATELET) {
            /* SLiM's source, for its marked flows: the same cut as its filter's, above */
            if (!from_peer && cut_switch)
                act = NFX_ACT_PRE_IBC;
        } else if (op) {
            if ((!from_peer && !cut_switch) || (from_peer && cut_peer))
                act = NFX_ACT_PRE_IBC;   /* a copy the other path carries too */
            else if (!from_peer && !cut_peer)
                /* the switch path waits for the source's cut, even for an early-released flow */
                act = m->action = NFX_ACT_BUFFER;
        }
        /* dup's source: the switch's copies tagged for it wait for the snapshot; the packets
         * that came before the duplication (untagged) are processed as usual */
        if (act == NFX_ACT_DUP_HOLD)
            act = (rx & NFX_RX_DUP_SRC) ? NFX_ACT_BUFFER : NFX_ACT_PROCESS;
        /* dup op, destination: after the repoint its own packets wait (the source's last
         * outputs are still on their way out); its copies go on in shadow */
        else if (act == NFX_ACT_PROCESS && (mv->dup & NFX_DUP_HOLD_OWN) && m->epoch == mv->epoch &&
                 !(rx & NFX_RX_DUP_DST))
            act = m->action = NFX_ACT_BUFFER;
        if (act == NFX_ACT_BUFFER)
            m->buffered++;
    }
    *peer = m->peer;
    bpf_spin_unlock(&m->lock);
    *mp = m;
    return act;
}

/* Send to another instance over the peer link in tx slot `slot`, naming the original side. */
static __always_inline int nfx_redirect_peer(struct xdp_md *ctx, __u32 slot, int side)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || slot < 2 || slot >= NFX_TX_SLOTS)
        return XDP_DROP;
    eth->h_dest[0] = 0x02;
    eth->h_dest[1] = 0;
    eth->h_dest[2] = 0;
    eth->h_dest[3] = 0;
    eth->h_dest[4] = NFX_PEER_MAC4;
    eth->h_dest[5] = side & 1;
    nfx_count(NFX_R_REDIRECTED);
    return nfx_tx.redirect_map(slot, XDP_DROP);
}

/* What the gate does with a packet the NF does not process. */
static __always_inline int nfx_gate_act(struct xdp_md *ctx, struct nfx_flow_key *k, __u32 act, __u32 peer,
                                        int side, __u32 rx, struct nfx_mark *m, struct nfx_move_cfg *mv)
{
    if (act == NFX_ACT_DROP) {
        nfx_count(NFX_R_GATE_DROP);
        return XDP_DROP;
    }
    if (act == NFX_ACT_PRE_IBC) {
        nfx_count(NFX_R_OP_PRE_IBC);
        return XDP_DROP;
    }
    if (act == NFX_ACT_REDIRECT)
        return nfx_redirect_peer(ctx, peer, side);
    if (act == NFX_ACT_BUFFER || act == NFX_ACT_TO_CTRL) {
        __u32 epoch = m ? m->epoch : 0;
        /* an instance that holds in the gate: its held packets never reach the agent, unless
         * the gate's FIFO has filled in this move (then they spill to the ring) */
        int held = 1;
        if (act == NFX_ACT_BUFFER && mv && mv->hold) {
            held = nfx_hold_put(ctx, side, rx, epoch);
            if (held > 0)
                nfx_count(NFX_R_HOLD_SPILLED);
        }
        if (held > 0)
            held = nfx_buffer(ctx, k, act == NFX_ACT_BUFFER ? NFX_BUF_PACKET : NFX_BUF_TO_CTRL, side, rx, epoch);
        if (held == 0) {
            nfx_count(act == NFX_ACT_BUFFER ? NFX_R_BUFFERED : NFX_R_TO_CTRL);
        } else {
            nfx_count(NFX_R_BUF_RING_FULL);
            if (m && act == NFX_ACT_BUFFER) {   /* not buffered after all: keep the counts exact */
                bpf_spin_lock(&m->lock);
                m->buffered--;
                bpf_spin_unlock(&m->lock);
            }
        }
        return XDP_DROP;
    }
    nfx_count(NFX_R_GATE_OTHER);
    return XDP_DROP;
}

/* An in-band control packet: one of the flow's own 5-tuple (so rules and marks treat it as the
 * flow), TOS NFX_TOS_IBC, payload starting with NFX_IBC_MAGIC. */
static __always_inline int nfx_is_ibc(struct xdp_md *ctx, struct nfx_pkt *p)
{
    if (p->tos != NFX_TOS_IBC)
        return 0;
    __u32 magic = 0;
    if (bpf_xdp_load_bytes(ctx, p->payload_off, &magic, sizeof(magic)))
        return 0;
    return magic == bpf_htonl(NFX_IBC_MAGIC);
}

/* SHarP's handover message (nfx_hsl.h) from the switch: the agent's handover support layer
 * reads it from a packet socket, so the program passes it to the stack untouched (the netns has
 * no address: the stack drops it after the socket's copy). Only from a switch port: nothing
 * else sends them here. */
static __always_inline int nfx_is_hsl(struct xdp_md *ctx, struct nfx_pkt *p, __u32 rx)
{
    if (p->tos != NFX_TOS_HSL || p->key.proto != IPPROTO_UDP || rx)
        return 0;
    __u32 magic = 0;
    if (bpf_xdp_load_bytes(ctx, p->payload_off, &magic, sizeof(magic)))
        return 0;
    return magic == bpf_htonl(NFX_HSL_MAGIC);
}

/* DiST's IBC: it marks the same point in the switch's copies of a flow at both instances. At
 * the source it follows the flow's packets (to the peer or the controller); at the destination
 * it records which path it came by, and the agent learns of it through the ring.
 * It counts only within its move: the epoch it carries (after the magic) must be the epoch of
 * the mark or filter that passes the flow on (source: no move config of its own), or, at the
 * destination, that of the running order-preserving move. Any other IBC is forged or stale:
 * dropped and counted, nothing recorded. */
static __always_inline int nfx_ibc(struct xdp_md *ctx, struct nfx_pkt *p, int side, __u32 rx)
{
    __u32 z = 0;
    struct nfx_move_cfg *mv = nfx_move_cfg.lookup(&z);
    struct nfx_move_state *ms = nfx_move_state.lookup(&z);
    nfx_count(NFX_R_IBC);
    __u32 w[2] = {};
    if (!mv || !ms || bpf_xdp_load_bytes(ctx, p->payload_off, w, sizeof(w))) {
        nfx_count(NFX_R_FORGED);
        return XDP_DROP;
    }
    __u32 epoch = bpf_ntohl(w[1]);
    /* this destination's OP move, or either end of a dup move (its source's cut, its
     * destination's last copy) */
    __u32 in_move = epoch && (mv->op || mv->dup) && epoch == mv->epoch;
    if (!(rx & (NFX_RX_PEER | NFX_RX_INJECTED))) {
        /* from the switch: does this instance pass the flow on (source) or take it (destination)? */
        struct nfx_mark *m = nfx_marks.lookup(&p->key);
        __u32 act = m ? m->action : NFX_ACT_PROCESS;
        __u32 peer = m ? m->peer : 0;
        __u32 tag = m ? m->epoch : 0;
        if (!m) {
#pragma unroll
            for (__u32 i = 0; i < NFX_MAX_FILTERS; i++) {
                __u32 slot = i;
                struct nfx_filter *f = nfx_filters.lookup(&slot);
                if (!f || !(f->flags & NFX_FILTER_USED))
                    continue;
                if (nfx_filter_match(f, &p->key, 0) || ((f->flags & NFX_FILTER_BIDIR) && nfx_filter_match(f, &p->key, 1))) {
                    act = f->action;
                    peer = f->peer;
                    tag = f->tag;
                    break;
                }
            }
        }
        if (act == NFX_ACT_REDIRECT || act == NFX_ACT_TO_CTRL) {
            if (!epoch || epoch != tag) {
                nfx_count(NFX_R_FORGED);
                return XDP_DROP;
            }
            if (act == NFX_ACT_REDIRECT)
                return nfx_redirect_peer(ctx, peer, side);
            nfx_buffer(ctx, &p->key, NFX_BUF_IBC, side, rx, epoch);
            return XDP_DROP;
        }
        if (!in_move) {
            nfx_count(NFX_R_FORGED);
            return XDP_DROP;
        }
        ms->ibc_switch[side & 1] = 1;
    } else {
        if (!in_move) {
            nfx_count(NFX_R_FORGED);
            return XDP_DROP;
        }
        ms->ibc_peer[side & 1] = 1;
    }
    nfx_buffer(ctx, &p->key, NFX_BUF_IBC, side, rx, mv->epoch);
    return XDP_DROP;
}

/* Rewrite the MACs for `side` and redirect there. */
static __always_inline int nfx_forward(struct xdp_md *ctx, struct nfx_port_cfg *pc, __u32 side)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || side > 1)
        return XDP_DROP;
    __builtin_memcpy(eth->h_source, pc->mac[side].addr, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, pc->peer_mac[side].addr, ETH_ALEN);
    int v = nfx_tx.redirect_map(side, XDP_DROP);   /* an empty slot drops, never aborts */
    if (v != XDP_REDIRECT)
        nfx_count(NFX_R_REDIRECT_FAIL);
    return v;
}

/* What every NF's entry runs before its own logic: which side and how the packet came, the
 * stamper's trailer taken off, the parse, DiST's IBC, and the gate. Returns 1 when the NF
 * processes the packet (act: PROCESS or STATELET); otherwise *verdict is the packet's verdict,
 * and the return 2 when the gate kept or passed it on, 0 when the front left it. */
static __always_inline int nfx_front(struct xdp_md *ctx, struct nfx_port_cfg *pc, struct nfx_pkt *p,
                                     int *side, __u32 *act, int *verdict, __u32 *shadow)
{
    __u32 rx = 0, rel_seq = 0, peer = 0;
    *side = nfx_rx(ctx, pc, &rx, &rel_seq);
    if (*side < 0) {
        if (*side == -1)
            nfx_count(NFX_R_NO_PORT);
        return 0;
    }
    if (nfx_stamp_take(ctx, p)) {
        p->reason = NFX_R_STAMP_TRIM_FAIL;  /* nothing for the NF to act on: dropped */
        return 0;
    }
    /* before the parse: what the NF does with a packet it cannot parse (an ICMP error it
     * translates) is output too */
    __u32 z = 0;
    struct nfx_move_cfg *mv = nfx_move_cfg.lookup(&z);   /* once: the gate and its actions read it too */
    if (nfx_dup(ctx, mv, &rx, shadow)) {
        nfx_count(NFX_R_FORGED);        /* a destination's copy where no dup move shadows it */
        p->reason = NFX_R_FORGED;       /* nothing for the NF to act on */
        return 0;
    }
    __u32 reason = nfx_parse(ctx, p);
    nfx_count(reason);
    if (reason != NFX_R_OK)
        return 0;
    if (nfx_is_ibc(ctx, p)) {
        *shadow = 0;                    /* a control packet, never output: not shadow traffic */
        *verdict = nfx_ibc(ctx, p, *side, rx);
        return 0;
    }
    if (nfx_is_hsl(ctx, p, rx)) {
        nfx_count(NFX_R_HSL);
        *verdict = XDP_PASS;
        return 0;
    }
    struct nfx_mark *mark = 0;
    struct nfx_gate_cfg *g = nfx_gate_cfg.lookup(&z);    /* once: the gate and the share flag */
    *act = nfx_gate(&p->key, *side, rx, rel_seq, &peer, &mark, mv, g);
    if (*act != NFX_ACT_PROCESS && *act != NFX_ACT_STATELET) {
        *shadow = 0;                    /* held (or passed on), not processed: shadowed when it is */
        if (*act == NFX_ACT_BUFFER || *act == NFX_ACT_TO_CTRL || *act == NFX_ACT_REDIRECT)
            nfx_stamp_put(ctx, p);      /* whoever processes it later reads the same stamp */
        *verdict = nfx_gate_act(ctx, &p->key, *act, peer, *side, rx, mark, mv);
        return 2;                       /* p's packet pointers may be stale: see NFX_NF_GATED */
    }
    /* sharing mirrors plain PROCESS packets; whether a record goes out is decided where it is
     * written (nfx_st_begin_pkt, nfx_st_keep): at the flow's batch boundaries (share_batch), or
     * when the NF makes or ends an entry. Deciding it here, on the stack, doubled the verifier's
     * walk of the IDS. SLiM's STATELET ones (and the cuts above) stay as they are, their records
     * led by the STAMP statelet too (while sharing they follow the batch rule as well: the agent
     * never runs SLiM and sharing on one instance, the ring has one reader) */
    if (g && g->share) {
        p->shared = 1;
        if (*act == NFX_ACT_PROCESS) {
            *act = NFX_ACT_STATELET;
            nfx_count(NFX_R_SHARED);
        }
    }
    return 1;
}

/* What nfx_nf_entry found: the packet, the instance's wiring, and, unless the NF's logic is to
 * run, the packet's verdict so far. */
struct nfx_entry {
    struct nfx_pkt p;
    struct nfx_port_cfg *pc;
    int side;
    __u32 act;               /* the gate's action: PROCESS or STATELET when the NF runs */
    int verdict;
    __u32 shadow;            /* dup's destination: the NF's output is dropped (nfx_nf_exit) */
};

#define NFX_NF_NO_CFG  0     /* the port config or the NF's own config is missing: dropped */
#define NFX_NF_LEFT    1     /* nfx_front kept the packet (e->verdict); an NF may still act on
                              * what was not parsed (e->p.reason) */
#define NFX_NF_PROCESS 2     /* the NF's logic runs */
#define NFX_NF_GATED   3     /* the gate kept or passed the packet on (e->verdict): nothing for the
                              * NF to act on, and p's packet pointers are stale when its trailer
                              * went back on (the verifier holds an NF to that) */

/* The start of every NF's entry point: its wiring and own config (`cfg`, the NF's config map
 * value), then nfx_front. The NF then has one exit: nfx_exit(e->verdict). */
static __always_inline int nfx_nf_entry(struct xdp_md *ctx, struct nfx_entry *e, void *cfg)
{
    __u32 z = 0;
    nfx_count(NFX_R_NF_RUN);     /* begun; nfx_nf_exit's verdict counts it ended (nfx/agent/settle.py) */
    __builtin_memset(e, 0, sizeof(*e));
    e->verdict = XDP_DROP;
    e->act = NFX_ACT_PROCESS;
    e->pc = nfx_port_cfg.lookup(&z);
    if (!e->pc || !cfg)
        return NFX_NF_NO_CFG;
    int f = nfx_front(ctx, e->pc, &e->p, &e->side, &e->act, &e->verdict, &e->shadow);
    if (f == 2)
        return NFX_NF_GATED;
    if (!f)
        return NFX_NF_LEFT;
    return NFX_NF_PROCESS;
}

/* The one exit of every NF: a shadow packet (dup's destination) has changed the NF's state
 * like any other, and is dropped here instead of leaving, counted with its bytes. */
static __always_inline int nfx_nf_exit(struct xdp_md *ctx, struct nfx_entry *e)
{
    if (e->shadow) {
        nfx_count(NFX_R_SHADOW);
        nfx_count_add(NFX_R_SHADOW_BYTES, bpf_xdp_get_buff_len(ctx));
        e->verdict = XDP_DROP;
    }
    return nfx_exit(e->verdict);
}

#endif /* NFX_NF_H */
