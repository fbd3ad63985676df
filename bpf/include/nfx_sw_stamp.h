/* nfx_sw_stamp.h: the switch's stamper (nfx_sw_cfg.stamp), part of bpf/switch.bpf.c and
 * included by it after its maps and sw_note: a flow packet from a host port that a rule sends
 * to NF ports only leaves with the flow's packet count as a trailer past its IPv4 datagram
 * (struct nfx_stamp, nfx_flow.h), which the NF takes off (nfx_stamp.h). Code, no layouts of its
 * own (nfx_switch.h has the stamper's reasons and table size). */
#ifndef NFX_SW_STAMP_H
#define NFX_SW_STAMP_H

/* the stamper's per-flow packet counts, by 5-tuple (so each direction its own) */
BPF_TABLE("lru_hash", struct nfx_flow_key, __u64, sw_stamps, NFX_SW_MAX_STAMPS);

/* 1: every output port of rule r faces an NF */
static __always_inline int sw_to_nfs_only(struct nfx_sw_rule *r)
{
    __u32 n = r->nports;
    if (n < 1 || n > NFX_SW_MAX_PORTS)
        return 0;
#pragma unroll
    for (__u32 i = 0; i < NFX_SW_MAX_PORTS; i++) {
        if (i < n) {
            __u32 port = r->ports[i];
            __u32 *role = sw_ports.lookup(&port);
            if (!role || !(*role & NFX_SW_PORT_NF))
                return 0;
        }
    }
    return 1;
}

/* 1: the frame, `grow` bytes longer, fits the MTU of every output port of rule r that exists
 * here (a veth drops a frame its receiving end's MTU does not fit, uncounted) */
static __always_inline int sw_stamp_fits(struct __sk_buff *skb, struct nfx_sw_rule *r, __s32 grow)
{
    __u32 n = r->nports;
#pragma unroll
    for (__u32 i = 0; i < NFX_SW_MAX_PORTS; i++) {
        if (i < n) {
            __u32 mtu = 0;
            if (bpf_check_mtu(skb, r->ports[i], &mtu, grow, 0) > 0)
                return 0;
        }
    }
    return 1;
}

/* The flow's packet count, this packet included. The add is atomic, the read after it is not
 * (LLVM 14 cannot use an atomic add's result): two CPUs adding at once to one flow may read
 * the same count, but none is lost. A flow's packets from one host port come through one
 * queue, so that does not happen on the testbeds. */
static __always_inline __u64 sw_stamp_count(struct nfx_flow_key *k)
{
    __u64 *v = sw_stamps.lookup(k);
    if (!v) {
        __u64 one = 1;
        if (!sw_stamps.insert(k, &one))
            return 1;
        v = sw_stamps.lookup(k);     /* another CPU made the entry first */
        if (!v)
            return 1;
    }
    __sync_fetch_and_add(v, 1);
    return *v;
}

/* The stamper (nfx_sw_cfg.stamp): a flow packet from a host port that rule r sends to NF ports
 * only gets the trailer of nfx_flow.h (struct nfx_stamp: the flow's packet count) right after
 * its IPv4 datagram, before any copy is made, so every copy carries the same stamp. Ethernet
 * padding, if any, goes: the trailer must end the frame for the NF to find it. */
static __always_inline void sw_stamp(struct __sk_buff *skb, struct nfx_sw_rule *r, struct nfx_flow_key *k,
                                     __u32 reason, __u32 in_port)
{
    __u32 z = 0;
    struct nfx_sw_cfg *c = sw_cfg.lookup(&z);
    if (!c || !c->stamp || !(r->actions & NFX_SW_OUTPUT))
        return;                     /* off: one array lookup per packet */
    __u32 *role = sw_ports.lookup(&in_port);
    if (!role || !(*role & NFX_SW_PORT_HOST) || !sw_to_nfs_only(r))
        return;
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + ETH_HLEN;
    if (reason != NFX_R_OK || (void *)(ip + 1) > end || skb->gso_size ||
        ip->tos == NFX_TOS_IBC || ip->tos == NFX_TOS_FIRE || ip->tos == NFX_TOS_HSL) {
        sw_note(NFX_SW_R_STAMP_SKIPPED);
        return;
    }
    __u32 l3_end = ETH_HLEN + bpf_ntohs(ip->tot_len), len = skb->len;
    if (l3_end > len) {
        sw_note(NFX_SW_R_STAMP_SKIPPED);
        return;
    }
    __u32 count = sw_stamp_count(k);      /* counted either way: a gap tells of an unstamped one */
    if (!sw_stamp_fits(skb, r, (__s32)(l3_end + NFX_STAMP_LEN) - (__s32)len)) {
        sw_note(NFX_SW_R_STAMP_TOO_BIG);   /* sent on unstamped, as the port would drop it */
        return;
    }
    struct nfx_stamp st = {};
    st.magic = bpf_htonl(NFX_STAMP_MAGIC);
    st.count = bpf_htonl(count);
    if (bpf_skb_change_tail(skb, l3_end + NFX_STAMP_LEN, 0)) {
        sw_note(NFX_SW_R_STAMP_FAIL);
        return;
    }
    if (bpf_skb_store_bytes(skb, l3_end, &st, sizeof(st), 0)) {
        bpf_skb_change_tail(skb, l3_end, 0);   /* no half-made trailer may look like padding */
        sw_note(NFX_SW_R_STAMP_FAIL);
        return;
    }
    sw_note(NFX_SW_R_STAMPED);
}

#endif /* NFX_SW_STAMP_H */
