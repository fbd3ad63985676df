/* gen.bpf.c: traffic generator, run only through BPF_PROG_TEST_RUN, in one of two transports
 * (nfx/loader/transmit.py): nfx_gen with live frames, or nfx_gen_tc on an skb.
 *
 * Every run rewrites the whole header from gen_tmpl (live-frame pages are recycled, an skb test
 * run hands every run the same skb, and whatever ran downstream may have rewritten them), picks
 * flow = n % nflows, derives the flow's source address and port, writes the nfx_gen_payload
 * fields, patches the IP and L4 checksums incrementally from the template's (computed for flow 0
 * with zero flow/seq/tx_ns), and sends: nfx_gen redirects through gen_tx, nfx_gen_tc sends a
 * clone out of cfg.tx_ifindex (the kernel unclones the skb before the next run writes to it).
 *
 * Concurrency: gen_ctr and gen_seq are plain read-modify-write, not atomics. That is safe
 * because one live test-run call runs on one CPU with migration disabled, and nfx.traffic.gen
 * issues calls one at a time from one thread: there is never a second writer. Two processes
 * driving the same loaded generator at once would break per-flow sequence numbers.
 * Per-CPU senders (cfg.cpus > 1): nfx.traffic.gen runs one thread pinned to each CPU
 * 0..cpus-1; the call on CPU c sends only the flows of block c % cpus (a contiguous share) with
 * its own counter slot, so again every word has one writer, and every flow one sending CPU --
 * which keeps it in one queue of a multi-queue veth (rx queue = sending CPU % queues).
 *
 * Built with NFX_GEN_UNTIMED (a traffic loop's generator), tx_ns is 0: no clock read.
 *
 * The payload beyond nfx_gen_payload is whatever the initial frame held (zeros); nothing on
 * the path writes L4 payload, so the template checksum keeps covering it. */
#include "nfx_bpf.h"
#include "nfx_bench.h"

#ifndef NFX_GEN_FLOWS
#define NFX_GEN_FLOWS 1
#endif

#define GEN_L4_OFF   (sizeof(struct ethhdr) + sizeof(struct iphdr))     /* no IP options */
#define GEN_UDP_PL   (GEN_L4_OFF + sizeof(struct udphdr))
#define GEN_TCP_PL   (GEN_L4_OFF + sizeof(struct tcphdr))                /* no TCP options */

BPF_ARRAY(gen_cfg, struct nfx_gen_cfg, 1);
BPF_ARRAY(gen_tmpl, struct nfx_gen_tmpl, 1);
#define GEN_CTR_STRIDE 8               /* one counter per sending CPU, a cache line apart */
#define GEN_MAX_CPUS   64
BPF_ARRAY(gen_ctr, __u64, GEN_MAX_CPUS * GEN_CTR_STRIDE);   /* packets generated (flow picker) */
BPF_ARRAY(gen_seq, __u32, NFX_GEN_FLOWS);      /* next sequence number per flow = sent so far */
BPF_DEVMAP(gen_tx, 4);

/* one's-complement accumulation of a 32-bit word as it lies in memory */
static __always_inline __u64 gen_add32(__u64 acc, __u32 v)
{
    return acc + (v >> 16) + (v & 0xffff);
}

static __always_inline __u16 gen_fold(__u64 acc)
{
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    return (__u16)acc;
}

/* what gen_fill took, to give back when the packet could not be sent */
struct gen_taken {
    __u64 *ctr;
    __u64 n;
    __u32 *seqp;
    __u32 seq;
};

/* The next packet of this CPU's flows into the frame at data: 0, or -1 (nothing taken). */
static __always_inline int gen_fill(void *data, void *end, struct nfx_gen_cfg *c, struct nfx_gen_tmpl *t,
                                    struct gen_taken *tk)
{
    __u32 part = 0, lo = 0, cnt = c->nflows;
    if (c->cpus > 1) {
        part = bpf_get_smp_processor_id() % c->cpus;
        lo = (__u64)c->nflows * part / c->cpus;
        cnt = (__u64)c->nflows * (part + 1) / c->cpus - lo;
    }
    __u32 slot = part * GEN_CTR_STRIDE;
    __u64 *ctr = gen_ctr.lookup(&slot);
    if (!ctr || !cnt)
        return -1;                          /* more CPUs than GEN_MAX_CPUS, or than flows */
    if (data + sizeof(struct nfx_gen_tmpl) > end)
        return -1;
    __builtin_memcpy(data, t->hdr, sizeof(struct nfx_gen_tmpl));

    __u64 n = *ctr;
    __u32 flow = lo + n % cnt;
    __u32 *seqp = gen_seq.lookup(&flow);
    if (!seqp)
        return -1;                          /* nflows larger than the compiled NFX_GEN_FLOWS */
    __u32 seq = *seqp;

    struct iphdr *ip = data + sizeof(struct ethhdr);
    __u16 *l4_check, *sport_p;
    struct nfx_gen_payload *pl;
    int tcp = c->proto == IPPROTO_TCP;
    if (tcp) {
        struct tcphdr *th = data + GEN_L4_OFF;
        l4_check = &th->check;
        sport_p = &th->source;
        pl = data + GEN_TCP_PL;
    } else {
        struct udphdr *uh = data + GEN_L4_OFF;
        l4_check = &uh->check;
        sport_p = &uh->source;
        pl = data + GEN_UDP_PL;
    }
    if ((void *)(pl + 1) > end)
        return -1;
    *ctr = n + 1;
    *seqp = seq + 1;
    tk->ctr = ctr;
    tk->n = n;
    tk->seqp = seqp;
    tk->seq = seq;

    __u32 old_addr = ip->saddr;
    __u32 new_addr = bpf_htonl(bpf_ntohl(old_addr) + flow / c->flows_per_addr);
    __u16 old_port = *sport_p;
    __u16 new_port = bpf_htons(c->sport_base + flow % c->flows_per_addr);
#ifdef NFX_GEN_UNTIMED
    __u64 now = 0;                          /* a loop's build: see nfx/traffic/loop.py */
#else
    __u64 now = bpf_ktime_get_ns();
#endif

    ip->saddr = new_addr;
    nfx_csum_replace4(&ip->check, old_addr, new_addr);
    *sport_p = new_port;
    pl->magic = NFX_GEN_MAGIC;
    pl->flow = flow;
    pl->seq = seq;
    pl->pad = 0;
    pl->tx_ns = now;

    /* L4: pseudo-header address and port change, flow/seq/tx_ns were zero in the template */
    __u64 acc = (__u16)~*l4_check;
    acc = gen_add32(acc, ~old_addr);
    acc = gen_add32(acc, new_addr);
    acc += (__u16)~old_port;
    acc += new_port;
    acc = gen_add32(acc, flow);
    acc = gen_add32(acc, seq);
    acc = gen_add32(acc, (__u32)now);
    acc = gen_add32(acc, (__u32)(now >> 32));
    __u16 sum = ~gen_fold(acc);
    if (!sum && !tcp)
        sum = 0xffff;                       /* UDP: 0 would mean "no checksum" */
    *l4_check = sum;
    return 0;
}

/* The generator's config and template: 0 until a caller has set both. */
static __always_inline int gen_setup(struct nfx_gen_cfg **c, struct nfx_gen_tmpl **t)
{
    __u32 z = 0;
    *c = gen_cfg.lookup(&z);
    *t = gen_tmpl.lookup(&z);
    return *c && *t && (*c)->nflows && (*c)->flows_per_addr;
}

int nfx_gen(struct xdp_md *ctx)
{
    int verdict = XDP_ABORTED;
    struct nfx_gen_cfg *c;
    struct nfx_gen_tmpl *t;
    struct gen_taken tk = {};
    /* the frame length is the initial frame's; adjust only if a caller passed another size */
    if (gen_setup(&c, &t)) {
        __u32 len = bpf_xdp_get_buff_len(ctx);
        if (len == c->frame_len || !bpf_xdp_adjust_tail(ctx, (int)c->frame_len - (int)len)) {
            void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
            if (!gen_fill(data, end, c, t, &tk)) {
                nfx_count(NFX_R_GEN_SENT);
                verdict = gen_tx.redirect_map(c->tx_slot, 0);
            }
        }
    }
    return nfx_exit(verdict);
}

/* The tc transport: the verdict slots count as the switch's do (TC_ACT_SHOT: drop, the
 * original skb is not wanted; a frame this program cannot make: aborted). */
int nfx_gen_tc(struct __sk_buff *skb)
{
    int verdict = XDP_ABORTED;
    struct nfx_gen_cfg *c;
    struct nfx_gen_tmpl *t;
    struct gen_taken tk = {};
    if (gen_setup(&c, &t) && skb->len == c->frame_len) {
        void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
        if (!gen_fill(data, end, c, t, &tk)) {
            verdict = XDP_DROP;
            if (bpf_clone_redirect(skb, c->tx_ifindex, 0)) {
                *tk.seqp = tk.seq;           /* not sent: the flow's next packet takes its number */
                *tk.ctr = tk.n;
                nfx_count(NFX_R_GEN_TX_FAIL);
            } else {
                nfx_count(NFX_R_GEN_SENT);
            }
        }
    }
    nfx_exit(verdict);
    return TC_ACT_SHOT;
}
