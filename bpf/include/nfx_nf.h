/* nfx_nf.h: what every NF program runs around its own logic: the gate (per-flow marks, then
 * wildcard filters for flows with no mark) and the wiring that forwards a packet out the other
 * side. Layouts are in nfx.h. */
#ifndef NFX_NF_H
#define NFX_NF_H

#include "nfx_bpf.h"

#ifndef NFX_MAX_FLOWS
#define NFX_MAX_FLOWS 262144
#endif

NFX_TABLE("hash", struct nfx_flow_key, struct nfx_mark, nfx_marks, NFX_MAX_FLOWS);
NFX_TABLE("array", __u32, struct nfx_filter, nfx_filters, NFX_MAX_FILTERS);
NFX_TABLE("array", __u32, struct nfx_gate_cfg, nfx_gate_cfg, 1);
NFX_TABLE("array", __u32, struct nfx_port_cfg, nfx_port_cfg, 1);
BPF_DEVMAP(nfx_tx, NFX_TX_SLOTS);

static __always_inline int nfx_filter_match(struct nfx_filter *f, struct nfx_flow_key *k, int swap)
{
    __u32 s = swap ? k->daddr : k->saddr, d = swap ? k->saddr : k->daddr;
    __u16 sp = swap ? k->dport : k->sport, dp = swap ? k->sport : k->dport;
    return ((s & f->smask) == f->saddr) && ((d & f->dmask) == f->daddr) &&
           (!f->sport || f->sport == sp) && (!f->dport || f->dport == dp) &&
           (!f->proto || f->proto == k->proto);
}

/* The flow's action: its per-flow mark if it has one, else the first matching filter, else
 * PROCESS. A BUFFER mark whose backlog has been released flips to PROCESS here, under the
 * lock, so a live packet can never overtake a buffered one. */
static __always_inline __u32 nfx_gate(struct nfx_flow_key *k, __u32 *peer)
{
    __u32 z = 0;
    struct nfx_gate_cfg *g = nfx_gate_cfg.lookup(&z);
    __u32 act = NFX_ACT_PROCESS;
    if (!g)
        return act;
    struct nfx_mark *m = g->marks ? nfx_marks.lookup(k) : 0;
    if (m) {
        bpf_spin_lock(&m->lock);
        if (m->action == NFX_ACT_BUFFER && m->draining && m->released == m->buffered)
            m->action = NFX_ACT_PROCESS;
        if (m->action == NFX_ACT_BUFFER)
            m->buffered++;
        act = m->action;
        *peer = m->peer;
        bpf_spin_unlock(&m->lock);
        return act;
    }
    __u32 nf = g->filters;
#pragma unroll
    for (__u32 i = 0; i < NFX_MAX_FILTERS; i++) {
        if (i >= nf)
            break;
        __u32 slot = i;
        struct nfx_filter *f = nfx_filters.lookup(&slot);
        if (!f || !(f->flags & NFX_FILTER_USED))
            continue;
        if (nfx_filter_match(f, k, 0) || ((f->flags & NFX_FILTER_BIDIR) && nfx_filter_match(f, k, 1))) {
            *peer = f->peer;
            return f->action;
        }
    }
    return act;
}

/* What the gate does with a packet the NF does not process: the moves' actions. */
static __always_inline int nfx_gate_act(struct xdp_md *ctx, __u32 act, __u32 peer)
{
    if (act == NFX_ACT_DROP) {
        nfx_count(NFX_R_GATE_DROP);
        return XDP_DROP;
    }
    nfx_count(NFX_R_GATE_OTHER);
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

/* Which side a packet came in on: NFX_SIDE_IN, NFX_SIDE_OUT, or -1. */
static __always_inline int nfx_ingress_side(struct xdp_md *ctx, struct nfx_port_cfg *pc)
{
    __u32 ifi = ctx->ingress_ifindex;
    if (ifi == pc->ifindex[NFX_SIDE_IN])
        return NFX_SIDE_IN;
    if (ifi == pc->ifindex[NFX_SIDE_OUT])
        return NFX_SIDE_OUT;
    return -1;
}

#endif /* NFX_NF_H */
