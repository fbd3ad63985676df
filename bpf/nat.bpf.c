/* NAT: source NAT for IPv4 TCP, UDP and ICMP echo from the inside prefix to a pool of public
 * addresses and ports. Inside → outside packets create or use a nat_fwd entry; outside → inside
 * packets must hit a nat_rev entry. Each connection owns one (public address, port, proto) in
 * nat_ports, inserted with BPF_NOEXIST so two CPUs can never hand out the same port. */
#include "nfx_nf.h"
#include "nfx_nat.h"

#define NAT_PORT_TRIES 8

NFX_TABLE("hash", struct nfx_flow_key, struct nfx_nat_entry, nat_fwd, NFX_MAX_FLOWS);
NFX_TABLE("hash", struct nfx_flow_key, struct nfx_nat_entry, nat_rev, NFX_MAX_FLOWS);
NFX_TABLE("hash", struct nfx_nat_port, struct nfx_flow_key, nat_ports, NFX_MAX_FLOWS);
NFX_TABLE("array", __u32, struct nfx_nat_cfg, nat_cfg, 1);
NFX_TABLE("percpu_array", __u32, __u64, nat_cursor, 1);   /* u64: per-CPU values are 8-byte slots */
/* mappings held per inside address, for nat_cfg.host_quota: touched only when a mapping is made
 * or evicted, never by a packet of a known flow. Signed: a count the datapath and the sweeper
 * both lowered may dip below 0 for a moment, which must not read as a huge count. */
NFX_TABLE("hash", __u32, __s32, nat_hosts, NFX_MAX_FLOWS);

static __always_inline void nat_host_add(__u32 addr, __s32 d)
{
    __s32 *n = nat_hosts.lookup(&addr);
    if (n) {
        __sync_fetch_and_add(n, d);
        return;
    }
    if (d > 0 && nat_hosts.insert(&addr, &d) != 0 && (n = nat_hosts.lookup(&addr)))
        __sync_fetch_and_add(n, d);          /* another CPU made the entry first */
}

/* the inside host may not open another mapping */
static __always_inline int nat_over_quota(struct nfx_nat_cfg *c, __u32 addr)
{
    if (!c->host_quota)
        return 0;
    __s32 *n = nat_hosts.lookup(&addr);
    return n && *n >= (__s32)c->host_quota;
}

static __always_inline __u64 nat_timeout(struct nfx_nat_cfg *c, __u8 proto, __u32 flags)
{
    if (proto == IPPROTO_TCP)
        return (flags & (NFX_TCP_RST | NFX_TCP_FIN)) ? c->timeout_ns[NFX_TO_TCP_CLOSED]
                                                     : c->timeout_ns[NFX_TO_TCP];
    if (proto == IPPROTO_ICMP)
        return c->timeout_ns[NFX_TO_ICMP];
    return c->timeout_ns[NFX_TO_UDP];
}

static __always_inline int nat_expired(struct nfx_nat_cfg *c, struct nfx_nat_entry *fwd,
                                       struct nfx_nat_entry *rev, __u8 proto, __u64 now)
{
    __u64 last = fwd->last_seen_ns;
    __u32 flags = fwd->tcp_flags;
    if (rev) {
        if (rev->last_seen_ns > last)
            last = rev->last_seen_ns;
        flags |= rev->tcp_flags;
    }
    /* signed: an entry another CPU (or instance) touched a tick later than this CPU's clock
     * reads (nfx_clock.h) is fresh, not 2^64 ns old */
    return (__s64)(now - last) > (__s64)nat_timeout(c, proto, flags);
}

/* ---- statelets (nfx_statelet.h): a mirrored packet's changes to nat_fwd, nat_rev and nat_ports.
 * While the gate shares state (p->shared) an entry's statelet carries all its fields: the
 * packets between two batch boundaries wrote nothing, so the boundary's values must stand alone. */
#define NAT_STF_ALL   0x3f       /* every field of an entry: what creation wrote */
#define NAT_STF_TOUCH (NFX_ST_BIT(NFX_STF_NAT_PKTS) | NFX_ST_BIT(NFX_STF_NAT_BYTES) | \
                       NFX_ST_BIT(NFX_STF_NAT_LAST_SEEN_NS))

/* The new values of the fields in `mask` of entry k -> e of nat_fwd or nat_rev. */
static __always_inline void nat_st_entry(struct nfx_st *s, __u32 table, struct nfx_flow_key *k,
                                         struct nfx_nat_entry *e, __u32 mask)
{
    int h = nfx_st_open(s);
    if (h < 0)
        return;
    nfx_st_flow(s, k);
    if (mask & NFX_ST_BIT(NFX_STF_NAT_PEER))
        nfx_st_flow(s, &e->peer);
    nfx_st_field(s, mask, NFX_STF_NAT_PKTS, e->pkts);
    nfx_st_field(s, mask, NFX_STF_NAT_BYTES, e->bytes);
    nfx_st_field(s, mask, NFX_STF_NAT_CREATED_NS, e->created_ns);
    nfx_st_field(s, mask, NFX_STF_NAT_LAST_SEEN_NS, e->last_seen_ns);
    nfx_st_field(s, mask, NFX_STF_NAT_TCP_FLAGS, e->tcp_flags);
    nfx_st_close(s, h, table, NFX_ST_SET, 2, mask, e->created_ns);
}

/* A port allocation: nat_ports[pk] = owner. */
static __always_inline void nat_st_port(struct nfx_st *s, struct nfx_nat_port *pk, struct nfx_flow_key *owner)
{
    int h = nfx_st_open(s);
    if (h < 0)
        return;
    nfx_st_word(s, nfx_st_pack8(pk, sizeof(*pk)));
    nfx_st_flow(s, owner);
    nfx_st_close(s, h, NFX_ST_NAT_PORTS, NFX_ST_SET, 1, NFX_ST_BIT(NFX_STF_VALUE), 0);
}

/* Remove a connection (created at `created`): both entries and its port. */
static __always_inline void nat_evict(struct nfx_flow_key *inside, struct nfx_flow_key *outside,
                                      __u64 created, struct nfx_st *st)
{
    struct nfx_nat_port pk = {};
    pk.addr = outside->daddr;
    pk.port = outside->dport;
    pk.proto = outside->proto;
    nat_ports.delete(&pk);
    nat_rev.delete(outside);
    if (nat_fwd.delete(inside) == 0)
        nat_host_add(inside->saddr, -1);
    if (st) {
        nfx_st_del_word(st, NFX_ST_NAT_PORTS, nfx_st_pack8(&pk, sizeof(pk)));
        nfx_st_del_flow(st, NFX_ST_NAT_REV, outside, created);
        nfx_st_del_flow(st, NFX_ST_NAT_FWD, inside, created);
    }
}

/* Claim a public (address, port) for `in`; on success fills `out` with the return key. */
static __always_inline int nat_alloc(struct nfx_nat_cfg *c, struct nfx_flow_key *in,
                                     struct nfx_flow_key *out, __u64 now, struct nfx_st *st)
{
    __u32 z = 0;
    __u64 *cur = nat_cursor.lookup(&z);
    if (!cur || !c->pool_count || c->port_hi < c->port_lo)
        return -1;
    __u32 span = (__u32)c->port_hi - c->port_lo + 1;
    __u32 ncpu = c->ncpu ? c->ncpu : 1;
    __u32 cpu = bpf_get_smp_processor_id();
    /* paired pooling: one inside host always leaves by the same public address */
    __u32 h = bpf_ntohl(in->saddr);
    h ^= h >> 16;
    h *= 0x45d9f3b;
    h ^= h >> 16;
    __u32 addr = bpf_htonl(c->pool_base + h % c->pool_count);
    out->saddr = in->daddr;
    out->daddr = addr;
    out->proto = in->proto;
    struct nfx_nat_port pk = {};
    pk.addr = addr;
    pk.proto = in->proto;
    for (int i = 0; i < NAT_PORT_TRIES; i++) {
        /* each CPU's cursor starts in its own slice of the range: no shared counter needed,
         * and the insert below settles any overlap */
        __u32 n = (__u32)*cur;
        *cur = n + 1;
        __u16 port = bpf_htons((__u16)(c->port_lo + (cpu * (span / ncpu) + n) % span));
        pk.port = port;
        if (nat_ports.insert(&pk, in) == 0)
            goto claimed;
        /* taken: reclaim it if its connection has gone idle */
        struct nfx_flow_key *owner = nat_ports.lookup(&pk);
        if (!owner)
            continue;
        struct nfx_flow_key okey = *owner;
        struct nfx_nat_entry *of = nat_fwd.lookup(&okey);
        if (of) {
            struct nfx_flow_key orev = of->peer;
            __u64 ocreated = of->created_ns;
            struct nfx_nat_entry *orv = nat_rev.lookup(&orev);
            if (!nat_expired(c, of, orv, okey.proto, now))
                continue;
            nat_rev.delete(&orev);
            if (nat_fwd.delete(&okey) == 0)
                nat_host_add(okey.saddr, -1);
            if (st) {
                nfx_st_del_flow(st, NFX_ST_NAT_REV, &orev, ocreated);
                nfx_st_del_flow(st, NFX_ST_NAT_FWD, &okey, ocreated);
            }
        }
        nfx_count(NFX_R_NAT_EXPIRED);
        if (nat_ports.update(&pk, in) == 0)
            goto claimed;
    }
    return -1;
claimed:
    if (in->proto == IPPROTO_ICMP) {
        out->sport = 0;
        out->dport = pk.port;
    } else {
        out->sport = in->dport;
        out->dport = pk.port;
    }
    return 0;
}

/* Rewrite the source (outbound) or destination (inbound) address and port (or ICMP id), with
 * incremental checksums. Returns -1 if a header word is not where the parse found it. */
static __always_inline int nat_rewrite(struct xdp_md *ctx, struct nfx_pkt *p, int outbound,
                                       __u32 new_addr, __u16 new_port)
{
    struct iphdr *ip = nfx_pkt_ip(ctx);
    __u16 *port_p = nfx_pkt_u16(ctx, outbound ? p->sport_off : p->dport_off);
    if (!ip || !port_p)
        return -1;
    __u32 *addr_p = outbound ? &ip->saddr : &ip->daddr;
    __u32 old_addr = *addr_p;
    __u16 old_port = *port_p;
    *addr_p = new_addr;
    nfx_csum_replace4(&ip->check, old_addr, new_addr);
    *port_p = new_port;
    __u16 *csum = nfx_pkt_u16(ctx, p->csum_off);
    if (!csum)
        return 0;        /* UDP without checksum stays without */
    if (p->key.proto != IPPROTO_ICMP)
        nfx_csum_replace4(csum, old_addr, new_addr);   /* pseudo-header */
    nfx_csum_replace2(csum, old_port, new_port);
    if (p->key.proto == IPPROTO_UDP && *csum == 0)
        *csum = 0xffff;
    return 0;
}

/* Count the packet on its entry; returns the statelet bit of tcp_flags if they grew. */
static __always_inline __u32 nat_touch(struct nfx_nat_entry *e, struct nfx_pkt *p, __u64 now)
{
    __sync_fetch_and_add(&e->pkts, 1);
    __sync_fetch_and_add(&e->bytes, p->len);
#ifdef NFX_NAT_V2
    if (p->len > e->max_len)
        e->max_len = p->len;
#endif
    e->last_seen_ns = now;
    if (p->tcp_flags & ~e->tcp_flags) {
        e->tcp_flags |= p->tcp_flags;
        return NFX_ST_BIT(NFX_STF_NAT_TCP_FLAGS);
    }
    return 0;
}

static __always_inline int nat_outbound(struct xdp_md *ctx, struct nfx_pkt *p, struct nfx_nat_cfg *c,
                                        struct nfx_port_cfg *pc, __u64 now, struct nfx_st *st)
{
    if ((p->key.saddr & c->inside_mask) != c->inside_net) {
        nfx_count(NFX_R_NAT_NOT_INSIDE);
        return XDP_DROP;
    }
    if (p->key.proto == IPPROTO_ICMP && !p->sport_off) {
        nfx_count(NFX_R_ICMP_NOT_ECHO);      /* an echo reply going out: nothing to map */
        return XDP_DROP;
    }
    struct nfx_nat_entry *e = nat_fwd.lookup(&p->key);
    if (e && nat_expired(c, e, 0, p->key.proto, now)) {
        /* the forward side alone looks idle: the return side may still be live */
        struct nfx_flow_key rk = e->peer;
        __u64 created = e->created_ns;
        struct nfx_nat_entry *r = nat_rev.lookup(&rk);
        if (nat_expired(c, e, r, p->key.proto, now)) {
            nfx_count(NFX_R_NAT_EXPIRED);
            nat_evict(&p->key, &rk, created, st);
            e = 0;
        }
    }
    __u32 created = 0;
    if (!e) {
        if (nat_over_quota(c, p->key.saddr)) {
            nfx_count(NFX_R_NAT_QUOTA);
            return XDP_DROP;
        }
        struct nfx_nat_entry fwd = {}, rev = {};
        if (nat_alloc(c, &p->key, &fwd.peer, now, st)) {
            nfx_count(NFX_R_NAT_PORTS_EXHAUSTED);
            return XDP_DROP;
        }
        rev.peer = p->key;
        fwd.created_ns = rev.created_ns = now;
        fwd.last_seen_ns = rev.last_seen_ns = now;
        struct nfx_nat_port pk = {};
        pk.addr = fwd.peer.daddr;
        pk.port = fwd.peer.dport;
        pk.proto = p->key.proto;
        if (nat_rev.update(&fwd.peer, &rev) || nat_fwd.update(&p->key, &fwd)) {
            nat_rev.delete(&fwd.peer);
            nat_ports.delete(&pk);
            nfx_count(NFX_R_NAT_MAP_FULL);
            if (st) {
                nfx_st_del_flow(st, NFX_ST_NAT_REV, &fwd.peer, now);
                nfx_st_del_word(st, NFX_ST_NAT_PORTS, nfx_st_pack8(&pk, sizeof(pk)));
            }
            return XDP_DROP;
        }
        nfx_count(NFX_R_NAT_NEW);
        nat_host_add(p->key.saddr, 1);
        if (st) {
            nfx_st_keep(st);             /* a mapping is shared at once, boundary or not */
            nat_st_entry(st, NFX_ST_NAT_REV, &fwd.peer, &rev, NAT_STF_ALL);
            nat_st_port(st, &pk, &p->key);
        }
        created = 1;
        e = nat_fwd.lookup(&p->key);
        if (!e)
            return XDP_DROP;
    }
    __u32 grew = nat_touch(e, p, now);
    if (st)
        nat_st_entry(st, NFX_ST_NAT_FWD, &p->key, e, created | p->shared ? NAT_STF_ALL : NAT_STF_TOUCH | grew);
    __u32 new_addr = e->peer.daddr;
    __u16 new_port = e->peer.dport;
    if (p->sport_off && nat_rewrite(ctx, p, 1, new_addr, new_port))
        return XDP_DROP;
    return nfx_forward(ctx, pc, NFX_SIDE_OUT);
}

static __always_inline int nat_inbound(struct xdp_md *ctx, struct nfx_pkt *p, struct nfx_nat_cfg *c,
                                       struct nfx_port_cfg *pc, __u64 now, struct nfx_st *st)
{
    struct nfx_nat_entry *r = nat_rev.lookup(&p->key);
    if (!r || !p->dport_off) {
        nfx_count(NFX_R_NAT_NO_MAPPING);
        return XDP_DROP;
    }
    __u32 grew = nat_touch(r, p, now);
    if (st)
        nat_st_entry(st, NFX_ST_NAT_REV, &p->key, r, p->shared ? NAT_STF_ALL : NAT_STF_TOUCH | grew);
    __u32 new_addr = r->peer.saddr;
    __u16 new_port = r->peer.sport;
    if (nat_rewrite(ctx, p, 0, new_addr, new_port))
        return XDP_DROP;
    return nfx_forward(ctx, pc, NFX_SIDE_IN);
}

/* ---- ICMP errors (RFC 5508): the quoted packet names a mapping; translate it back ---------- */
/* Rewrite the outer address, the quoted address and port, and every checksum that covers them:
 * outer IP; quoted IP; quoted L4 (when quoted at all: 8 bytes of TCP hold no checksum); and the
 * outer ICMP checksum, which covers all the quoted bytes. All words sit at even offsets from
 * the ICMP header, so each change is one incremental update. */
static __always_inline void nat_icmp_rewrite(struct iphdr *ip, struct icmphdr *ic, struct iphdr *eip,
                                             __u32 *outer_addr, __u32 *emb_addr, __u16 *emb_port,
                                             __u16 *el4_csum, __u32 eproto, __u32 na, __u16 np)
{
    __u32 oa = *emb_addr;
    __u16 op = *emb_port;
    nfx_csum_replace4(&ip->check, *outer_addr, na);
    *outer_addr = na;
    __u16 old_ec = eip->check;
    nfx_csum_replace4(&eip->check, oa, na);
    *emb_addr = na;
    *emb_port = np;
    nfx_csum_replace4(&ic->checksum, oa, na);
    nfx_csum_replace2(&ic->checksum, old_ec, eip->check);
    nfx_csum_replace2(&ic->checksum, op, np);
    if (!el4_csum)
        return;
    __u16 old_lc = *el4_csum;
    if (eproto != IPPROTO_ICMP)
        nfx_csum_replace4(el4_csum, oa, na);          /* pseudo-header */
    nfx_csum_replace2(el4_csum, op, np);
    if (eproto == IPPROTO_UDP && *el4_csum == 0)
        *el4_csum = 0xffff;
    nfx_csum_replace2(&ic->checksum, old_lc, *el4_csum);
}

/* An ICMP error crossing the NAT. From outside it quotes a packet the NAT sent out (source:
 * the public tuple): the inside host gets it, addressed and quoted as it sent the packet. From
 * inside it is a host's answer to a translated packet (quoted destination: the inside tuple):
 * it leaves as if the public address had answered. The mapping only reads: errors never make,
 * refresh or end one. Other non-echo ICMP is dropped (counted as NFX_R_ICMP_NOT_ECHO). */
static __always_inline int nat_icmp_error(struct xdp_md *ctx, struct nfx_pkt *p, struct nfx_port_cfg *pc,
                                          int side)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct iphdr *ip = nfx_pkt_ip(ctx);
    struct icmphdr *ic = data + (p->l4_off & 0xff);
    if (!ip || !p->l4_off || (void *)(ic + 1) > end)
        return XDP_DROP;
    if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED && ic->type != ICMP_PARAMETERPROB)
        return XDP_DROP;
    struct iphdr *eip = (void *)(ic + 1);
    if ((void *)(eip + 1) > end)
        goto bad;
    __u32 eihl = eip->ihl;
    /* a later fragment quotes no L4 header */
    if (eip->version != 4 || eihl < 5 || (eip->frag_off & bpf_htons(0x1fff)))
        goto bad;
    __u8 *el4 = (void *)eip + eihl * 4;
    __u32 el4_off = p->l4_off + sizeof(*ic) + eihl * 4;
    if ((void *)(el4 + 8) > end || el4_off + 8 > p->l3_end)
        goto bad;
    __u32 eproto = eip->protocol;
    __u16 *ports = (void *)el4;
    __u16 *el4_csum = 0;
    __u16 *emb_port;
    struct nfx_flow_key k = {};
    /* the key of the mapping's direction that the quoted packet went the other way in */
    k.saddr = eip->daddr;
    k.daddr = eip->saddr;
    k.proto = eproto;
    if (eproto == IPPROTO_UDP || eproto == IPPROTO_TCP) {
        k.sport = ports[1];
        k.dport = ports[0];
        emb_port = side == NFX_SIDE_IN ? &ports[1] : &ports[0];
        if (eproto == IPPROTO_UDP) {
            if (ports[3])                          /* UDP without checksum stays without */
                el4_csum = &ports[3];
        } else if ((void *)(el4 + 18) <= end && el4_off + 18 <= p->l3_end) {
            el4_csum = &ports[8];
        }
    } else if (eproto == IPPROTO_ICMP && side == NFX_SIDE_OUT) {
        struct icmphdr *eic = (void *)el4;
        if (eic->type != ICMP_ECHO)                /* only requests leave with a mapping */
            goto bad;
        k.dport = eic->un.echo.id;
        emb_port = &eic->un.echo.id;
        el4_csum = &eic->checksum;
    } else {
        goto bad;
    }
    __u32 na;
    __u16 np;
    __u32 *outer_addr, *emb_addr;
    if (side == NFX_SIDE_IN) {
        struct nfx_nat_entry *e = nat_fwd.lookup(&k);
        /* a host's own answer; an inside router's would need a mapping of its own */
        if (!e || ip->saddr != eip->daddr)
            goto none;
        na = e->peer.daddr;
        np = e->peer.dport;
        outer_addr = &ip->saddr;
        emb_addr = &eip->daddr;
    } else {
        struct nfx_nat_entry *r = nat_rev.lookup(&k);
        if (!r || ip->daddr != eip->saddr)
            goto none;
        na = r->peer.saddr;
        np = r->peer.sport;
        outer_addr = &ip->daddr;
        emb_addr = &eip->saddr;
    }
    nat_icmp_rewrite(ip, ic, eip, outer_addr, emb_addr, emb_port, el4_csum, eproto, na, np);
    nfx_count(NFX_R_NAT_ICMP_ERR);
    return nfx_forward(ctx, pc, side == NFX_SIDE_IN ? NFX_SIDE_OUT : NFX_SIDE_IN);
none:
    nfx_count(NFX_R_NAT_NO_MAPPING);
    return XDP_DROP;
bad:
    nfx_count(NFX_R_NAT_ICMP_BAD);
    return XDP_DROP;
}

int nfx_nat(struct xdp_md *ctx)
{
    __u32 z = 0;
    struct nfx_nat_cfg *c = nat_cfg.lookup(&z);
    struct nfx_entry e;
    int r = nfx_nf_entry(ctx, &e, c);
    if (r != NFX_NF_PROCESS) {
        /* what the front leaves unparsed: ICMP errors are ours to translate; ARP goes to this
         * namespace's stack, which answers only for addresses it owns; the rest stays dropped
         * (IPv6 has no NAT here, fragments no port to map) */
        if (r == NFX_NF_LEFT && e.p.reason == NFX_R_ICMP_NOT_ECHO)
            e.verdict = nat_icmp_error(ctx, &e.p, e.pc, e.side);
        else if (r == NFX_NF_LEFT && e.p.reason == NFX_R_ARP)
            e.verdict = XDP_PASS;
        goto out;
    }
    /* emit this packet's state update as a statelet (when shared between its flow's batch
     * boundaries, only if it makes or ends a mapping: nfx_st_begin_pkt) */
    int mirror = e.act == NFX_ACT_STATELET;
    /* unmirrored packets pay a NULL test where state changes; mirrored ones build a record */
    struct nfx_st *st = mirror ? nfx_st_begin_pkt(&e.p) : 0;
    /* idle timeouts are seconds: the tick's time is enough (nfx_clock.h) */
    __u64 now = nfx_now();
    if (e.side == NFX_SIDE_IN)
        e.verdict = nat_outbound(ctx, &e.p, c, e.pc, now, st);
    else
        e.verdict = nat_inbound(ctx, &e.p, c, e.pc, now, st);
    if (st)
        nfx_st_end(st, e.p.len);
out:
    return nfx_nf_exit(ctx, &e);
}
