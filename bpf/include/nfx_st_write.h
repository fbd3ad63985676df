/* nfx_st_write.h: how an NF writes the statelets of a mirrored packet (NFX_ACT_STATELET) into
 * the nfx_statelets ring; the record format is in nfx_statelet.h. Code, not layouts. */
#ifndef NFX_ST_WRITE_H
#define NFX_ST_WRITE_H

#include "nfx_bpf.h"
#include "nfx_statelet.h"

#ifndef NFX_STATELET_RING_PAGES
#define NFX_STATELET_RING_PAGES 4096     /* 16 MiB: about 1.7 s of IDS statelets at 100k pps */
#endif

NFX_RING(nfx_statelets, NFX_STATELET_RING_PAGES);

/* the record a mirrored packet builds; per-CPU scratch, as it is too big for the stack */
struct nfx_st {
    __u32 n;                 /* words written */
    __u32 lost;              /* a statelet did not fit: the record is dropped and counted */
    __u32 tmp;               /* for nfx_st_opaque */
    __u32 keep;              /* 0: a shared packet between its flow's batch boundaries: its
                              * record is dropped at nfx_st_end unless the packet made or ended
                              * an entry (nfx_st_keep). Map memory: unknown to the verifier,
                              * which so walks one path, not one per case */
    __u64 w[NFX_STATELET_WORDS];
};
BPF_PERCPU_ARRAY(nfx_st_buf, struct nfx_st, 1);

#define NFX_ST_ENTRY_MAX 10      /* words of the largest statelet: header, flow key, a whole NAT entry */
#define NFX_ST_BIT(b) (1u << (b))

/* The scratch record for a mirrored packet (NULL if unavailable: the packet is just processed). */
static __always_inline struct nfx_st *nfx_st_begin(void)
{
    __u32 z = 0;
    struct nfx_st *s = nfx_st_buf.lookup(&z);
    if (s) {
        s->n = 0;
        s->lost = 0;
        s->keep = 1;
    }
    return s;
}

/* The packet made or ended an entry: its record goes out even between batch boundaries (a
 * connection's mapping must be on every member before anyone needs it; an end is never missed). */
static __always_inline void nfx_st_keep(struct nfx_st *s)
{
    s->keep = 1;
}

/* `v` with its value hidden from the verifier (a round trip through map memory): branching on
 * an event mask the verifier knows would make it walk the rest of the program once per mask. */
static __always_inline __u32 nfx_st_opaque(struct nfx_st *s, __u32 v)
{
    s->tmp = v;
    return *(volatile __u32 *)&s->tmp;
}

/* The index is masked for the verifier; the empty asm stops clang from dropping the mask when
 * it can prove the index small, which leaves the verifier a register it cannot bound. */
static __always_inline void nfx_st_word(struct nfx_st *s, __u64 v)
{
    __u32 n = s->n;
    __u32 i = n;
    asm volatile("" : "+r"(i));
    s->w[i & (NFX_STATELET_WORDS - 1)] = v;
    s->n = n + 1;
}

/* One field of a statelet, written if its bit is in the statelet's mask. */
static __always_inline void nfx_st_field(struct nfx_st *s, __u32 mask, __u32 bit, __u64 v)
{
    if (mask & NFX_ST_BIT(bit))
        nfx_st_word(s, v);
}

static __always_inline void nfx_st_flow(struct nfx_st *s, const struct nfx_flow_key *k)
{
    __u64 w[2];
    __builtin_memcpy(w, k, sizeof(w));
    nfx_st_word(s, w[0]);
    nfx_st_word(s, w[1]);
}

/* An 8-byte (or shorter) key or value as one zero-padded word. */
static __always_inline __u64 nfx_st_pack8(const void *p, __u32 size)
{
    __u64 w = 0;
    if (size == 8)
        __builtin_memcpy(&w, p, 8);
    else if (size == 4)
        __builtin_memcpy(&w, p, 4);
    return w;
}

/* Start one entry's statelet; returns its header's word index, or -1 when the record is full
 * (cannot happen with the NFs' largest packets, but then the record is dropped and counted). */
static __always_inline int nfx_st_open(struct nfx_st *s)
{
    __u32 h = s->n;
    if (h > NFX_STATELET_WORDS - NFX_ST_ENTRY_MAX) {
        s->lost = 1;
        return -1;
    }
    nfx_st_word(s, 0);       /* the header, filled in by nfx_st_close */
    return h;
}

static __always_inline void nfx_st_close(struct nfx_st *s, int h, __u32 table, __u32 op, __u32 nkey,
                                         __u32 mask, __u64 inc_ns)
{
    struct nfx_statelet hd = {};
    hd.table = table;
    hd.op = op;
    hd.nval = s->n - h - 1 - nkey;
    hd.mask = mask;
    hd.inc = inc_ns >> NFX_STATELET_INC_SHIFT;
    __u64 w;
    __builtin_memcpy(&w, &hd, sizeof(w));
    __u32 i = h;
    asm volatile("" : "+r"(i));
    s->w[i & (NFX_STATELET_WORDS - 1)] = w;
}

/* The entry with flow key `k` of `table`, incarnation `inc_ns`, is gone. */
static __always_inline void nfx_st_del_flow(struct nfx_st *s, __u32 table, const struct nfx_flow_key *k,
                                            __u64 inc_ns)
{
    s->keep = 1;             /* an end is shared at once, even between batch boundaries */
    int h = nfx_st_open(s);
    if (h < 0)
        return;
    nfx_st_flow(s, k);
    nfx_st_close(s, h, table, NFX_ST_DEL, 2, 0, inc_ns);
}

/* The entry with the one-word key `kw` of `table` is gone. */
static __always_inline void nfx_st_del_word(struct nfx_st *s, __u32 table, __u64 kw)
{
    s->keep = 1;
    int h = nfx_st_open(s);
    if (h < 0)
        return;
    nfx_st_word(s, kw);
    nfx_st_close(s, h, table, NFX_ST_DEL, 1, 0, 0);
}

/* Send the packet's record (if it changed anything, and is not a quiet one) and count it. */
static __always_inline void nfx_st_end(struct nfx_st *s, __u32 pkt_len)
{
    __u32 n = s->n;
    if (!s->keep) {
        nfx_count(NFX_R_SHARE_QUIET);    /* between boundaries, nothing made or ended */
        return;
    }
    nfx_count_add(NFX_R_STATELET_PKT_BYTES, pkt_len);
    if (s->lost) {
        nfx_count(NFX_R_STATELET_TOO_BIG);
        return;
    }
    if (n == 0)
        return;          /* the packet changed nothing */
    __u64 len = (__u64)n * sizeof(__u64);
    asm volatile("" : "+r"(len));        /* bound this register itself, for the verifier */
    if (len > sizeof(s->w))
        return;
    /* &s->w[0], not s->w: BCC 0.26's rewriter aborts clang on an array argument to ringbuf_output */
    if (nfx_statelets.ringbuf_output(&s->w[0], len, 0)) {
        nfx_count(NFX_R_STATELET_RING_FULL);
        return;
    }
    nfx_count(NFX_R_STATELET);
    nfx_count_add(NFX_R_STATELET_BYTES, len);
}

#endif /* NFX_ST_WRITE_H */
