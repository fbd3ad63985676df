/* fwd.bpf.c: the bare XDP forward, the floor `nfx bench dataplane` measures every NF against.
 *
 * It does what any XDP NF must do to move a packet and nothing else: check there is an Ethernet
 * header, take the other side's MACs and redirect out the other side's interface through a
 * devmap. No IP parse, no gate, no NF state. Its port config is an NF's own (struct
 * nfx_port_cfg: both sides' ifindex, MAC and next hop's MAC), slot s of fwd_tx is side s, so
 * it forwards exactly where the NF it stands in for would. One exit: nfx_exit counts the
 * verdict; the reason counters say why a packet was dropped. */
#include "nfx_bpf.h"

BPF_ARRAY(fwd_port, struct nfx_port_cfg, 1);
BPF_DEVMAP(fwd_tx, 2);

int nfx_fwd(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u32 z = 0;
    struct nfx_port_cfg *pc = fwd_port.lookup(&z);
    __u32 ifi = ctx->ingress_ifindex;
    int verdict = XDP_DROP;

    if ((void *)(eth + 1) > end) {
        nfx_count(NFX_R_TRUNC_ETH);
    } else if (!pc || (ifi != pc->ifindex[0] && ifi != pc->ifindex[1]) || !ifi) {
        nfx_count(NFX_R_NO_PORT);
    } else {
        __u32 out = ifi == pc->ifindex[0] ? 1 : 0;      /* in on one side, out the other */
        __builtin_memcpy(eth->h_source, pc->mac[out].addr, ETH_ALEN);
        __builtin_memcpy(eth->h_dest, pc->peer_mac[out].addr, ETH_ALEN);
        verdict = fwd_tx.redirect_map(out, XDP_DROP);   /* an empty slot drops, never aborts */
        if (verdict != XDP_REDIRECT)
            nfx_count(NFX_R_REDIRECT_FAIL);
    }
    return nfx_exit(verdict);
}
