/* nfx_bench.h: the traffic generator's and the sink's layouts. Python mirror: nfx/layout/bench.py. */
#ifndef NFX_BENCH_H
#define NFX_BENCH_H

#define NFX_GEN_MAGIC 0x6e667821u    /* "nfx!" */

struct nfx_gen_payload {             /* first bytes of every generated L4 payload, host order */
    __u32 magic;
    __u32 flow;
    __u32 seq;
    __u32 pad;
    __u64 tx_ns;
};

struct nfx_gen_cfg {
    __u32 nflows;
    __u32 flows_per_addr;            /* flows share a source address in runs of this many */
    __u16 sport_base;                /* host order */
    __u16 l4_off;                    /* ethernet + IP header length */
    __u16 frame_len;
    __u8  proto;
    __u8  cpus;                      /* >1: the caller on CPU c sends only block c % cpus of the flows */
    __u32 tx_slot;                   /* live transport: gen_tx's slot of the sending interface */
    __u32 tx_ifindex;                /* tc transport: the sending interface (nfx/loader/transmit.py) */
};

struct nfx_gen_tmpl {
    __u8 hdr[64];                    /* ethernet + IPv4 + UDP/TCP, with checksums for flow 0 */
};

struct nfx_sink_flow {
    __u64 received;                  /* every packet of the flow = distinct + dup + out_of_window */
    __u64 dup;                       /* a seq whose bit was already set */
    __u64 reordered;                 /* not a dup, and seq below the highest seen */
    __u64 distinct;                  /* a seq whose bit this packet set */
    __u64 out_of_window;             /* seq's bitmap word already reused by a newer block: unjudged */
    __u64 high;                      /* highest seq + 1 (u64: seq 2^32-1 must not wrap it), 0 = none */
};

/* The sink's seen-bitmap: W = nfx_sink_cfg.words per flow, word (seq / 64) % W of flow f at
 * index f * W + that. A word records one 64-seq block, named by
 * blk = seq / 64 and the sink's epoch (bumped by a reset, so nothing needs clearing); a word
 * whose tag is older than the arriving block is stale and restarts empty, a newer one means
 * the block's record is gone and the packet is counted out_of_window, never guessed at. */
struct nfx_sink_word {
    __u64 bits;                      /* bit i: seq blk * 64 + i received */
    __u32 blk;
    __u32 epoch;
};

struct nfx_sink_cfg {
    __u32 epoch;                     /* nonzero; words of another epoch are empty */
    __u32 nflows;                    /* flows of this sink; the arrays' sizes are capacities */
    __u32 words;                     /* bitmap words per flow, a power of two */
    __u32 pad;
};

/* latency histogram of rx_ns - tx_ns: values below NFX_LAT_SUB have their own bucket; above,
 * each power of two [2^e, 2^(e+1)) splits into NFX_LAT_SUB equal sub-buckets:
 * index = NFX_LAT_SUB * (e - 1) + ((v >> (e - 2)) & 3); 128 buckets reach 2^33 ns (8.6 s) */
#define NFX_LAT_SUB 4
#define NFX_LAT_BUCKETS 128

#endif /* NFX_BENCH_H */
