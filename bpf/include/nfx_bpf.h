/* nfx_bpf.h: kernel-side helpers every nfx program shares: includes, the verdict/reason
 * counters, checksum updates, and the eth/IPv4/L4 parser. Layouts live in the per-concern
 * headers (nfx_flow.h here; a program includes the others it uses). */
#ifndef NFX_BPF_H
#define NFX_BPF_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/pkt_cls.h>
#include "nfx_flow.h"

/* BCC provides htons() and friends, not libbpf's bpf_endian.h names */
#ifndef bpf_htons
#define bpf_htons(x) htons(x)
#define bpf_ntohs(x) ntohs(x)
#define bpf_htonl(x) htonl(x)
#define bpf_ntohl(x) ntohl(x)
#endif

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* State maps are declared through NFX_TABLE. Built with NFX_PIN_DIR set, the program opens
 * the maps already pinned there instead of creating new ones: how a rebuilt program (hot
 * upgrade) takes over a running instance's state. */
#ifdef NFX_PIN_DIR
#define NFX_TABLE(type, key, val, name, n) BPF_TABLE_PINNED(type, key, val, name, n, NFX_PIN_DIR "/" #name)
#else
#define NFX_TABLE(type, key, val, name, n) BPF_TABLE(type, key, val, name, n)
#endif

/* A ringbuf declared like NFX_TABLE: built with NFX_PIN_DIR, the program reuses the ring pinned
 * there, so a reader keeps its stream across a hot upgrade. (BCC's BPF_RINGBUF_OUTPUT, with the
 * pinned section name BPF_TABLE_PINNED uses.) */
#ifdef NFX_PIN_DIR
#define NFX_RING(_name, _pages)                                                              \
struct _name##_table_t {                                                                     \
    int key;                                                                                 \
    u32 leaf;                                                                                \
    int (*ringbuf_output)(void *, u64, u64);                                                 \
    void *(*ringbuf_reserve)(u64);                                                           \
    void (*ringbuf_discard)(void *, u64);                                                    \
    void (*ringbuf_submit)(void *, u64);                                                     \
    u32 max_entries;                                                                         \
};                                                                                           \
__attribute__((section("maps/ringbuf:" NFX_PIN_DIR "/" #_name)))                             \
struct _name##_table_t _name = { .max_entries = ((_pages) * PAGE_SIZE) }
#else
#define NFX_RING(_name, _pages) BPF_RINGBUF_OUTPUT(_name, _pages)
#endif

/* one counter array per program; nfx_count() and nfx_count_add() are the only writers */
NFX_TABLE("percpu_array", __u32, __u64, nfx_stats, NFX_STAT_MAX);

static __always_inline void nfx_count(__u32 i)
{
    __u64 *v = nfx_stats.lookup(&i);
    if (v)
        (*v)++;
}

/* for the few slots that sum amounts (bytes) rather than count events */
static __always_inline void nfx_count_add(__u32 i, __u64 n)
{
    __u64 *v = nfx_stats.lookup(&i);
    if (v)
        *v += n;
}

/* ---- checksums (RFC 1624: HC' = ~(~HC + ~m + m')), on raw network-order words ---------- */
static __always_inline __u16 nfx_csum_fold_add(__u16 a, __u16 b)
{
    __u32 s = (__u32)a + b;
    return (s & 0xffff) + (s >> 16);
}

static __always_inline void nfx_csum_replace2(__u16 *sum, __u16 old, __u16 new)
{
    __u16 c = ~*sum;
    c = nfx_csum_fold_add(c, ~old);
    c = nfx_csum_fold_add(c, new);
    *sum = ~c;
}

static __always_inline void nfx_csum_replace4(__u16 *sum, __u32 old, __u32 new)
{
    nfx_csum_replace2(sum, old >> 16, new >> 16);
    nfx_csum_replace2(sum, old & 0xffff, new & 0xffff);
}

/* ---- parsing -------------------------------------------------------------------------- */
#define NFX_MAX_L3 0x3fff        /* longer than any linear frame: bounds the pointer arithmetic */
/* Where things are, as offsets from the frame's start, not pointers: a packet pointer kept
 * across the gate differs by protocol (its offset, its checked range), and the verifier walked
 * the NF's logic once per such difference (3x the instructions, 2.8 s a NAT load). A reader
 * makes its pointer where it needs it (nfx_pkt_ip, nfx_pkt_u16), bounds-checked there. */
struct nfx_pkt {
    __u8  l4_off;            /* the L4 header (set once the IPv4 header is whole) */
    __u8  csum_off;          /* the L4 checksum; 0 for UDP with checksum 0 (none) */
    __u8  sport_off;         /* the header word holding key.sport (ICMP: the echo id); 0: none */
    __u8  dport_off;
    __u8  tos;               /* IPv4 TOS: marks nfx's in-band control packets */
    __u8  pad0[3];
    __u32 payload_off;       /* from the start of the frame */
    __u32 len;               /* whole frame */
    __u32 l3_end;            /* from the start of the frame: where the IPv4 total length ends */
    __u8  tcp_flags;         /* NFX_TCP_* */
    __u8  reason;            /* what nfx_parse returned: lets an NF act on what it did not parse */
    __u8  stamped;           /* it came with the stamper's trailer, now off (nfx_stamp.h) */
    __u8  shared;            /* mirrored because the gate shares state (nfx_gate_cfg.share) */
    struct nfx_flow_key key;
    __u32 stamp;             /* the trailer's count (struct nfx_stamp), if stamped */
    __u32 pad;
};

/* The Ethernet header: NFX_R_OK for an untagged IPv4 frame, else why not (XDP and tc alike). */
static __always_inline __u32 nfx_parse_eth(void *data, void *end)
{
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return NFX_R_TRUNC_ETH;
    __u16 proto = eth->h_proto;
    if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
        return NFX_R_VLAN;
    if (proto == bpf_htons(ETH_P_ARP))
        return NFX_R_ARP;
    if (proto == bpf_htons(ETH_P_IPV6))
        return NFX_R_IPV6;
    if (proto != bpf_htons(ETH_P_IP))
        return NFX_R_NON_IP;
    return NFX_R_OK;
}

/* The IPv4 header's fixed part right after the Ethernet header: NFX_R_OK, or why it is not one
 * (XDP and tc alike; the caller then checks that ihl * 4 bytes fit). */
static __always_inline __u32 nfx_ipv4_fixed(struct iphdr *ip, void *end)
{
    if ((void *)(ip + 1) > end)
        return NFX_R_TRUNC_IP;
    if (ip->version != 4)
        return NFX_R_BAD_VERSION;
    if (ip->ihl < 5)
        return NFX_R_BAD_IHL;
    return NFX_R_OK;
}

/* A whole datagram, not a fragment; options are legal, counted and let through. */
static __always_inline __u32 nfx_ipv4_whole(struct iphdr *ip)
{
    if (ip->frag_off & bpf_htons(0x3fff))       /* MF set or offset != 0 */
        return NFX_R_FRAGMENT;
    if (ip->ihl > 5)
        nfx_count(NFX_R_IP_OPTIONS);
    return NFX_R_OK;
}

/* Parse eth/IPv4/{TCP,UDP,ICMP echo}. Returns NFX_R_OK or a reason the packet cannot be
 * handled; NFX_R_IP_OPTIONS and NFX_R_EMPTY_PAYLOAD are counted here and parsing goes on.
 * The fields a reason leaves behind (tos, l4_off, key addresses) stay set for the NF. */
static __always_inline __u32 nfx_parse_frame(struct xdp_md *ctx, struct nfx_pkt *p)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u32 r = nfx_parse_eth(data, end);
    if (r != NFX_R_OK)
        return r;

    struct iphdr *ip = (void *)(eth + 1);
    r = nfx_ipv4_fixed(ip, end);
    if (r != NFX_R_OK)
        return r;
    p->tos = ip->tos;
    __u32 iplen = ip->ihl * 4;
    if ((void *)ip + iplen > end)
        return NFX_R_TRUNC_IP;
    /* the datagram must fit the frame: a longer claim would make state from bytes never sent
     * (a frame is linear here, at most a page: nfx programs load without XDP frags) */
    __u32 tot = bpf_ntohs(ip->tot_len);
    if (tot < iplen || tot > NFX_MAX_L3 || (void *)ip + tot > end)
        return NFX_R_BAD_TOT_LEN;
    p->l3_end = sizeof(struct ethhdr) + tot;
    /* the frame ends where the datagram does (no padding): its length without a helper call
     * (~9 ns a packet here); nfx_parse asks the kernel for the others' */
    if (!((void *)ip + tot < end))
        p->len = p->l3_end;
    r = nfx_ipv4_whole(ip);
    if (r != NFX_R_OK)
        return r;

    void *l4 = (void *)ip + iplen;
    __u32 l4_off = sizeof(struct ethhdr) + iplen;     /* at most 74: fits the u8 offsets */
    p->l4_off = l4_off;
    p->key.saddr = ip->saddr;
    p->key.daddr = ip->daddr;
    p->key.proto = ip->protocol;
    __u32 hlen;
    if (ip->protocol == IPPROTO_UDP) {
        struct udphdr *uh = l4;
        if ((void *)(uh + 1) > end)
            return NFX_R_TRUNC_L4;
        p->key.sport = uh->source;
        p->key.dport = uh->dest;
        p->sport_off = l4_off + __builtin_offsetof(struct udphdr, source);
        p->dport_off = l4_off + __builtin_offsetof(struct udphdr, dest);
        if (uh->check)
            p->csum_off = l4_off + __builtin_offsetof(struct udphdr, check);
        hlen = sizeof(*uh);
    } else if (ip->protocol == IPPROTO_TCP) {
        struct tcphdr *th = l4;
        if ((void *)(th + 1) > end)
            return NFX_R_TRUNC_L4;
        hlen = th->doff * 4;
        if (hlen < sizeof(*th) || l4 + hlen > end)
            return NFX_R_TRUNC_L4;
        p->key.sport = th->source;
        p->key.dport = th->dest;
        p->sport_off = l4_off + __builtin_offsetof(struct tcphdr, source);
        p->dport_off = l4_off + __builtin_offsetof(struct tcphdr, dest);
        p->csum_off = l4_off + __builtin_offsetof(struct tcphdr, check);
        p->tcp_flags = (th->fin ? NFX_TCP_FIN : 0) | (th->syn ? NFX_TCP_SYN : 0) |
                       (th->rst ? NFX_TCP_RST : 0) | (th->ack ? NFX_TCP_ACK : 0);
    } else if (ip->protocol == IPPROTO_ICMP) {
        struct icmphdr *ic = l4;
        if ((void *)(ic + 1) > end)
            return NFX_R_TRUNC_L4;
        if (ic->type == ICMP_ECHO) {
            p->key.sport = ic->un.echo.id;
            p->key.dport = 0;
            p->sport_off = l4_off + __builtin_offsetof(struct icmphdr, un.echo.id);
        } else if (ic->type == ICMP_ECHOREPLY) {
            p->key.sport = 0;
            p->key.dport = ic->un.echo.id;
            p->dport_off = l4_off + __builtin_offsetof(struct icmphdr, un.echo.id);
        } else {
            return NFX_R_ICMP_NOT_ECHO;
        }
        p->csum_off = l4_off + __builtin_offsetof(struct icmphdr, checksum);
        hlen = sizeof(*ic);
    } else {
        return NFX_R_UNSUPP_PROTO;
    }
    p->payload_off = l4_off + hlen;
    if (p->payload_off > p->l3_end)          /* the L4 header runs into Ethernet padding */
        return NFX_R_TRUNC_L4;
    if (p->payload_off == p->l3_end)
        nfx_count(NFX_R_EMPTY_PAYLOAD);
    return NFX_R_OK;
}

/* The IPv4 header of a parsed frame, checked for its fixed part; NULL if the frame is shorter
 * (it was not, at the parse, unless the frame has changed since). */
static __always_inline struct iphdr *nfx_pkt_ip(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct iphdr *ip = data + sizeof(struct ethhdr);
    if ((void *)(ip + 1) > end)
        return 0;
    return ip;
}

/* The 16-bit header word at offset `off` (nfx_pkt's *_off), checked; NULL for offset 0 (none). */
static __always_inline __u16 *nfx_pkt_u16(struct xdp_md *ctx, __u32 off)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    __u16 *w = data + (off & 0xff);
    if (!off || (void *)(w + 1) > end)
        return 0;
    return w;
}

static __always_inline __u32 nfx_parse(struct xdp_md *ctx, struct nfx_pkt *p)
{
    p->len = 0;
    __u32 r = nfx_parse_frame(ctx, p);
    if (!p->len)
        p->len = bpf_xdp_get_buff_len(ctx);
    p->reason = r;
    return r;
}

/* the one exit of every XDP program: count the verdict, return it */
static __always_inline int nfx_exit(int verdict)
{
    nfx_count((__u32)verdict & 7);
    return verdict;
}

#endif /* NFX_BPF_H */
