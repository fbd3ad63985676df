/* nfx_dup.h: the duplication baseline's tagged copies (nfx/migrate/dup.py), told apart at an NF
 * instance by their Ethernet source MAC (the tags: nfx_move.h). Code, no layouts of its own. */
#ifndef NFX_DUP_H
#define NFX_DUP_H

#include "nfx_bpf.h"
#include "nfx_move.h"

/* Which copy of a tagged duplication this is, into *rx (from a switch port, counted, or
 * released from this instance's buffer). A destination's copy is processed in shadow (*shadow)
 * while this instance's dup move (`mv`, its nfx_move_cfg) says so; anywhere else it is a copy
 * whose original another instance outputs: returns 1, and the caller drops it untouched. */
static __always_inline int nfx_dup(struct xdp_md *ctx, struct nfx_move_cfg *mv, __u32 *rx, __u32 *shadow)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || (*rx & (NFX_RX_PEER | NFX_RX_INJECTED)))
        return 0;
    __u32 hi = 0;
    __builtin_memcpy(&hi, eth->h_source, 4);
    __u8 last = eth->h_source[5];
    if (hi != bpf_htonl(NFX_DUP_TAG_HI) || eth->h_source[4] != NFX_DUP_TAG_B4 ||
        (last != NFX_DUP_TAG_SRC && last != NFX_DUP_TAG_DST))
        return 0;
    int from_switch = !(*rx & NFX_RX_RELEASED);
    if (last == NFX_DUP_TAG_SRC) {
        *rx |= NFX_RX_DUP_SRC;
        if (from_switch)
            nfx_count(NFX_R_DUP_COPY_SRC);
        return 0;
    }
    *rx |= NFX_RX_DUP_DST;
    if (from_switch)
        nfx_count(NFX_R_DUP_COPY_DST);
    if (!mv || !(mv->dup & NFX_DUP_SHADOW))
        return 1;
    *shadow = 1;
    return 0;
}

#endif /* NFX_DUP_H */
