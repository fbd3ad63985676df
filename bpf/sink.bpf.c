/* sink.bpf.c: the receiving host's XDP program. Generator packets (eth/IPv4/UDP|TCP whose
 * payload starts with nfx_gen_payload) are counted per flow, checked for duplicates and
 * reordering against a 64-packet window behind the highest sequence number, timed, and
 * dropped; everything else goes on to the host's stack.
 *
 * Concurrency: sink_flows is updated with plain read-modify-write. That is safe because the
 * sink sits on a veth with one rx queue: every frame it sees comes through that queue's one
 * NAPI context, which never runs on two CPUs at once, so each flow has one writer. (A veth
 * with several rx queues picks the queue by the sending CPU, which would give a flow two
 * writers; nfx.traffic.sink refuses such an interface.) Latency counters are per-CPU anyway.
 *
 * Sequence numbers are u32 and do not wrap in any realistic run (2^32 packets per flow). */
#include "nfx_bpf.h"

#ifndef NFX_SINK_FLOWS
#define NFX_SINK_FLOWS 1
#endif
/* verdict for generator packets: XDP_DROP normally; XDP_PASS lets tests see them in the stack */
#ifndef NFX_SINK_VERDICT
#define NFX_SINK_VERDICT XDP_DROP
#endif

BPF_ARRAY(sink_flows, struct nfx_sink_flow, NFX_SINK_FLOWS);
BPF_PERCPU_ARRAY(sink_lat, __u64, NFX_LAT_BUCKETS);
BPF_PERCPU_ARRAY(sink_lat_max, __u64, 1);

static __always_inline __u32 sink_log2(__u64 v)
{
    __u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8)  { v >>= 8;  r += 8; }
    if (v >> 4)  { v >>= 4;  r += 4; }
    if (v >> 2)  { v >>= 2;  r += 2; }
    if (v >> 1)  { r += 1; }
    return r;
}

/* layout described at NFX_LAT_BUCKETS in nfx.h */
static __always_inline __u32 sink_lat_bucket(__u64 v)
{
    if (v < NFX_LAT_SUB)
        return v;
    __u32 e = sink_log2(v);
    __u32 i = NFX_LAT_SUB * (e - 1) + ((v >> (e - 2)) & (NFX_LAT_SUB - 1));
    return i < NFX_LAT_BUCKETS ? i : NFX_LAT_BUCKETS - 1;
}

static __always_inline void sink_seq(struct nfx_sink_flow *s, __u32 seq)
{
    s->received++;
    if (s->high == 0 || seq >= s->high) {           /* new highest: slide the window */
        __u32 shift = seq + 1 - s->high;
        s->window = shift >= 64 ? 1 : (s->window << shift) | 1;
        s->high = seq + 1;
        return;
    }
    __u32 behind = s->high - 1 - seq;               /* 0 = the highest itself */
    if (behind >= 64) {                             /* too old to tell: count it as late */
        s->reordered++;
        return;
    }
    __u64 bit = 1ULL << behind;
    if (s->window & bit) {
        s->dup++;
    } else {
        s->window |= bit;
        s->reordered++;
    }
}

static __always_inline void sink_latency(__u64 tx_ns)
{
    __u64 now = bpf_ktime_get_ns();
    __u64 lat = now > tx_ns ? now - tx_ns : 0;
    __u32 b = sink_lat_bucket(lat);
    __u64 *h = sink_lat.lookup(&b);
    if (h)
        (*h)++;
    __u32 z = 0;
    __u64 *m = sink_lat_max.lookup(&z);
    if (m && lat > *m)
        *m = lat;
}

int nfx_sink(struct xdp_md *ctx)
{
    struct nfx_pkt p = {};
    __u32 r = nfx_parse(ctx, &p);
    if (r != NFX_R_OK) {
        nfx_count(r);
        goto foreign;
    }
    if (p.key.proto != IPPROTO_UDP && p.key.proto != IPPROTO_TCP)
        goto foreign;

    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 off = p.payload_off;
    if (off > 255)                                  /* bounds for the verifier; never true */
        goto foreign;
    struct nfx_gen_payload *g = data + off;
    if ((void *)(g + 1) > end || g->magic != NFX_GEN_MAGIC)
        goto foreign;

    __u32 flow = g->flow;
    struct nfx_sink_flow *s = sink_flows.lookup(&flow);
    if (!s) {
        nfx_count(NFX_R_SINK_BAD_FLOW);
        return nfx_exit(XDP_DROP);
    }
    nfx_count(NFX_R_SINK_RX);
    sink_seq(s, g->seq);
    sink_latency(g->tx_ns);
    return nfx_exit(NFX_SINK_VERDICT);

foreign:
    nfx_count(NFX_R_SINK_FOREIGN);
    return nfx_exit(XDP_PASS);
}
