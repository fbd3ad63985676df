/* nfx_stamp.h: the stamper's trailer (struct nfx_stamp, nfx_flow.h) at an NF, and the STAMP
 * statelet that carries it into a packet's statelet record. Code, no layouts of its own.
 *
 * A frame is stamped when it is eth + IPv4 whose total length ends exactly NFX_STAMP_LEN bytes
 * before the frame does, and those bytes start with NFX_STAMP_MAGIC. The front takes the trailer
 * off before anything reads the packet, so the NF's logic, its byte counters and every frame
 * that leaves toward a switch or a host see the packet as its host sent it. A packet the gate
 * keeps or passes on (buffered, held, to the controller, to a peer instance) gets the trailer
 * back, so the instance that finally processes it reads the same stamp from it. */
#ifndef NFX_STAMP_H
#define NFX_STAMP_H

#include "nfx_bpf.h"
#include "nfx_statelet.h"
#include "nfx_st_write.h"

/* Take the trailer off, if the frame has one, into p->stamped and p->stamp. Returns 0, or -1
 * when a trailer could not come off (the caller drops the frame, counted here). Unstamped
 * frames pay a bounds check and two compares. */
static __always_inline int nfx_stamp_take(struct xdp_md *ctx, struct nfx_pkt *p)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return 0;
    __u32 l3_end = sizeof(*eth) + bpf_ntohs(ip->tot_len);
    /* the frame's end as a pointer, not bpf_xdp_get_buff_len (a helper call: ~7 ns a packet
     * here); the same length, as nfx programs are loaded without XDP frags, so frames are linear */
    if (data + l3_end + NFX_STAMP_LEN != end)
        return 0;
    struct nfx_stamp s = {};
    if (bpf_xdp_load_bytes(ctx, l3_end, &s, sizeof(s)) || s.magic != bpf_htonl(NFX_STAMP_MAGIC))
        return 0;                /* 8 bytes of padding, not a trailer */
    if (bpf_xdp_adjust_tail(ctx, -NFX_STAMP_LEN)) {
        nfx_count(NFX_R_STAMP_TRIM_FAIL);
        return -1;
    }
    p->stamped = 1;
    p->stamp = bpf_ntohl(s.count);
    nfx_count(NFX_R_STAMPED);
    return 0;
}

/* Put the trailer back on a stamped packet the gate keeps or passes on. */
static __always_inline void nfx_stamp_put(struct xdp_md *ctx, struct nfx_pkt *p)
{
    if (!p->stamped)
        return;
    __u32 len = bpf_xdp_get_buff_len(ctx);
    struct nfx_stamp s = {};
    s.magic = bpf_htonl(NFX_STAMP_MAGIC);
    s.count = bpf_htonl(p->stamp);
    if (bpf_xdp_adjust_tail(ctx, NFX_STAMP_LEN)) {
        nfx_count(NFX_R_STAMP_LOST);
        return;
    }
    if (bpf_xdp_store_bytes(ctx, len, &s, sizeof(s))) {
        bpf_xdp_adjust_tail(ctx, -NFX_STAMP_LEN);
        nfx_count(NFX_R_STAMP_LOST);
        return;
    }
    nfx_count(NFX_R_STAMP_KEPT);
}

#endif /* NFX_STAMP_H */
