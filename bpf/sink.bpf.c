/* sink.bpf.c: the receiving host's XDP program. Generator packets (eth/IPv4/UDP|TCP whose
 * payload starts with nfx_gen_payload) are counted per flow, checked against a per-flow
 * seen-bitmap (struct nfx_sink_word in nfx_bench.h), timed, and dropped; everything else goes on to
 * the host's stack.
 *
 * Per flow, every packet lands in exactly one of: distinct (its seq's bit was clear: it sets
 * it), dup (the bit was set), out_of_window (the word holding its block was already reused by
 * a block words * 64 seqs newer, so neither can be told: counted, never guessed).
 * A distinct packet whose seq is below the flow's highest seen seq is also reordered. Nothing
 * slides or is cleared per packet: a word is retagged when a newer block reaches it, so the
 * cost is one word read-modify-write whatever the gap, and a reset only bumps the epoch.
 * Userspace then has, per flow: lost = sent - distinct seqs below sent, and unexpected =
 * distinct seqs at or above sent (never generated) -- exact while out_of_window is 0, which is
 * guaranteed whenever a flow's packets in a run fit words * 64.
 *
 * Sizes: the flow count and the words per flow are set at run time (nfx_sink_cfg); the arrays
 * are capacities, powers of two the loader rounds up to, so that one compiled program serves
 * every flow count up to its capacity.
 *
 * Concurrency: sink_flows and sink_bits are updated with plain read-modify-write. That is safe
 * because the sink sits on a veth with one rx queue: every frame it sees comes through that
 * queue's one NAPI context, which never runs on two CPUs at once, so each flow has one writer.
 * (A veth with several rx queues picks the queue by the sending CPU, which would give a flow
 * two writers; nfx.traffic.sink refuses such an interface.) Latency counters are per-CPU anyway.
 *
 * Sequence numbers are u32 and do not wrap in any realistic run (2^32 packets per flow).
 *
 * Bytes: a generator frame is exactly its IPv4 datagram (the smallest is 66 B, no Ethernet
 * padding), and its payload past nfx_gen_payload is zeros, as is the payload's pad word. A
 * counted packet in a longer frame (e.g. the stamper's trailer leaked past an NF) is also
 * counted NFX_R_SINK_BAD_LEN; one whose pad word or last 8 payload bytes are not zero
 * NFX_R_SINK_BAD_PAYLOAD (a spot check: two loads, not a scan of the payload).
 *
 * Echo (built with NFX_SINK_ECHO): a counted generator packet is not dropped but reflected out
 * of the interface it came in on (XDP_TX) with MACs, IPv4 addresses and L4 ports swapped and the
 * payload untouched, so a second sink at the sender reads the round trip from its tx_ns.
 * Echoes are counted by their verdict (NFX_V_TX): no other packet leaves the sink that way,
 * and a reason of their own would change nfx_flow.h, the layout hash of every NF's state.
 *
 * Loop (built with NFX_SINK_LOOP): a counted generator packet is redirected into sink_loop's
 * one slot, a veth whose peer is the generator's: the generator's XDP program makes the frame
 * its next packet and sends it into the path again (nfx/traffic/loop.py). Counted by the verdict
 * (NFX_V_REDIRECT), as echoes are. */
#include "nfx_bpf.h"
#include "nfx_bench.h"

/* capacities: flows, and bitmap words of all flows together */
#ifndef NFX_SINK_FLOWS
#define NFX_SINK_FLOWS 1
#endif
#ifndef NFX_SINK_BITS
#define NFX_SINK_BITS 1
#endif
/* verdict for generator packets: XDP_DROP normally; XDP_PASS lets tests see them in the stack */
#ifndef NFX_SINK_VERDICT
#define NFX_SINK_VERDICT XDP_DROP
#endif
#ifdef NFX_SINK_ECHO
#undef NFX_SINK_VERDICT
#define NFX_SINK_VERDICT XDP_TX
#endif

BPF_ARRAY(sink_flows, struct nfx_sink_flow, NFX_SINK_FLOWS);
BPF_ARRAY(sink_bits, struct nfx_sink_word, NFX_SINK_BITS);
BPF_ARRAY(sink_cfg, struct nfx_sink_cfg, 1);
BPF_PERCPU_ARRAY(sink_lat, __u64, NFX_LAT_BUCKETS);
BPF_PERCPU_ARRAY(sink_lat_max, __u64, 1);
BPF_DEVMAP(sink_loop, 1);       /* the loop's veth (NFX_SINK_LOOP builds only) */

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

/* layout described at NFX_LAT_BUCKETS in nfx_bench.h */
static __always_inline __u32 sink_lat_bucket(__u64 v)
{
    if (v < NFX_LAT_SUB)
        return v;
    __u32 e = sink_log2(v);
    __u32 i = NFX_LAT_SUB * (e - 1) + ((v >> (e - 2)) & (NFX_LAT_SUB - 1));
    return i < NFX_LAT_BUCKETS ? i : NFX_LAT_BUCKETS - 1;
}

static __always_inline void sink_seq(struct nfx_sink_flow *s, __u32 flow, __u32 seq,
                                     struct nfx_sink_cfg *c)
{
    s->received++;
    __u32 blk = seq >> 6, epoch = c->epoch;
    __u32 idx = flow * c->words + (blk & (c->words - 1));
    struct nfx_sink_word *w = sink_bits.lookup(&idx);
    if (!w) {                                       /* never: nflows * words <= NFX_SINK_BITS */
        s->out_of_window++;
        return;
    }
    if (w->epoch != epoch || w->blk < blk) {        /* stale word: this block starts empty */
        w->bits = 0;
        w->blk = blk;
        w->epoch = epoch;
    } else if (w->blk > blk) {                      /* the block's record is gone */
        s->out_of_window++;
        return;
    }
    __u64 bit = 1ULL << (seq & 63);
    if (w->bits & bit) {
        s->dup++;
        return;
    }
    w->bits |= bit;
    s->distinct++;
    if ((__u64)seq >= s->high)
        s->high = (__u64)seq + 1;
    else
        s->reordered++;
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

/* the frame and payload checks of a counted generator packet (see the top of the file) */
static __always_inline void sink_check_bytes(struct xdp_md *ctx, struct nfx_pkt *p, struct nfx_gen_payload *g)
{
    if (p->len != p->l3_end)
        nfx_count(NFX_R_SINK_BAD_LEN);
    __u64 tail = 0;
    __u32 hdr_end = p->payload_off + sizeof(*g);
    int bad = g->pad != 0;
    if (p->l3_end >= hdr_end + sizeof(tail) &&
        (bpf_xdp_load_bytes(ctx, p->l3_end - sizeof(tail), &tail, sizeof(tail)) || tail))
        bad = 1;
    if (bad)
        nfx_count(NFX_R_SINK_BAD_PAYLOAD);
}

#ifdef NFX_SINK_ECHO
/* Swap source and destination at every layer. Both checksums stay valid without an update:
 * the IPv4 header sum and the UDP/TCP sum (over the pseudo-header's two addresses and the two
 * ports) are one's-complement sums, which do not depend on the order of the words swapped. */
static __always_inline void sink_reflect(struct xdp_md *ctx, struct nfx_pkt *p)
{
    struct ethhdr *eth = (void *)(long)ctx->data;
    struct iphdr *ip = nfx_pkt_ip(ctx);
    __u16 *sport = nfx_pkt_u16(ctx, p->sport_off), *dport = nfx_pkt_u16(ctx, p->dport_off);
    if (!ip || !sport || !dport)
        return;                  /* parsed: never */
    __u8 mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
    __u32 a = ip->saddr;
    ip->saddr = ip->daddr;
    ip->daddr = a;
    __u16 port = *sport;
    *sport = *dport;
    *dport = port;
}
#endif

int nfx_sink(struct xdp_md *ctx)
{
    int verdict = XDP_PASS;
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

    __u32 flow = g->flow, z = 0;
    struct nfx_sink_cfg *c = sink_cfg.lookup(&z);
    struct nfx_sink_flow *s = sink_flows.lookup(&flow);
    if (!c || !s || flow >= c->nflows) {
        nfx_count(NFX_R_SINK_BAD_FLOW);
        verdict = XDP_DROP;
        goto out;
    }
    nfx_count(NFX_R_SINK_RX);
    sink_check_bytes(ctx, &p, g);
    sink_seq(s, flow, g->seq, c);
#ifndef NFX_SINK_LOOP
    sink_latency(g->tx_ns);
#endif
#ifdef NFX_SINK_ECHO
    sink_reflect(ctx, &p);
#endif
#ifdef NFX_SINK_LOOP
    verdict = sink_loop.redirect_map(0, 0);
#else
    verdict = NFX_SINK_VERDICT;
#endif
    goto out;

foreign:
    nfx_count(NFX_R_SINK_FOREIGN);
out:
    return nfx_exit(verdict);
}
