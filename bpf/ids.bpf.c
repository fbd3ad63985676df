/* IDS: a passive intrusion detector. Every handled packet is forwarded unchanged (except the
 * MACs) to the other side; on the way it updates per-flow and per-source-host counters, counts
 * the distinct destination ports each source touches (one scan alert when that reaches the
 * threshold), and matches the L4 payload against a run-time signature table. Alerts go to user
 * space through the ids_alerts ringbuf. */
#include "nfx_nf.h"
#include "nfx_ids.h"

#ifndef NFX_IDS_RING_PAGES
#define NFX_IDS_RING_PAGES 64            /* 256 KiB: about 6500 alert records */
#endif

#define IDS_EEXIST 17
#define IDS_WIN    64                    /* payload bytes loaded once per packet (power of 2) */

/* ids_hostports is a seen-set: the key is what counts, the value is unused. A key with pad=1
 * (port and proto 0) is a source's "scan alert already sent" token. */
#define IDS_SCAN_TOKEN_PAD 1

/* LRU: a full table gives the least recently used entry to a newcomer, so a flood of spoofed
 * sources or ports cannot fill the tables for good and blind scan detection to new hosts. The
 * kernel evicts without telling: ids_global counts entries created, and user space reads
 * evictions as created - present. An evicted entry leaves no statelet: a replica evicts by
 * itself when its own table fills. */
NFX_TABLE("lru_hash", struct nfx_flow_key, struct nfx_ids_flow, ids_flows, NFX_MAX_FLOWS);
NFX_TABLE("lru_hash", __u32, struct nfx_ids_host, ids_hosts, NFX_MAX_FLOWS);
NFX_TABLE("lru_hash", struct nfx_ids_hostport, __u8, ids_hostports, NFX_MAX_FLOWS);
NFX_TABLE("percpu_array", __u32, __u64, ids_global, NFX_IDS_G_MAX);
NFX_TABLE("array", __u32, struct nfx_ids_sig, ids_sigs, NFX_IDS_MAX_SIGS);
NFX_TABLE("percpu_array", __u32, __u64, ids_sig_hits, NFX_IDS_MAX_SIGS);
NFX_TABLE("array", __u32, struct nfx_ids_cfg, ids_cfg, 1);
BPF_RINGBUF_OUTPUT(ids_alerts, NFX_IDS_RING_PAGES);

static __always_inline void ids_global_add(__u32 i, __u64 n)
{
    __u64 *v = ids_global.lookup(&i);
    if (v)
        *v += n;
}

static __always_inline void ids_alert(struct nfx_flow_key *k, __u32 kind, __u32 id, __u64 now,
                                      struct nfx_ids_host *h)
{
    struct nfx_ids_alert a = {};
    a.ts_ns = now;
    a.key = *k;
    a.kind = kind;
    a.sig_id = id;
    ids_global_add(NFX_IDS_G_ALERTS, 1);
    if (h)
        __sync_fetch_and_add(&h->alerts, 1);
    if (ids_alerts.ringbuf_output(&a, sizeof(a), 0))
        nfx_count(NFX_R_IDS_RING_FULL);
}

/* The flow's entry, created if new (*created = 1). NOEXIST makes creation happen once even when
 * two CPUs see a flow's first packets together. NULL when the map is full. */
static __always_inline struct nfx_ids_flow *ids_flow_get(struct nfx_flow_key *k, __u64 now, int *created)
{
    struct nfx_ids_flow *f = ids_flows.lookup(k);
    if (f)
        return f;
    struct nfx_ids_flow nf = {};
    nf.first_ns = now;
    int r = ids_flows.insert(k, &nf);
    if (r == 0) {
        *created = 1;
        ids_global_add(NFX_IDS_G_FLOWS, 1);
    } else if (r != -IDS_EEXIST) {
        nfx_count(NFX_R_IDS_MAP_FULL);
        return 0;
    }
    return ids_flows.lookup(k);
}

/* what a packet changed besides its flow's and host's counters: for its statelets */
#define IDS_EV_FLAGS    0x01     /* the flow's tcp_flags grew */
#define IDS_EV_HOST_NEW 0x02     /* the source host's entry was created */
#define IDS_EV_PORT_NEW 0x04     /* (source, port, proto) joined the seen-set; dports grew */
#define IDS_EV_SCAN     0x08     /* scan token inserted; scan_alerted set, alerts grew */
#define IDS_EV_SIG      0x10     /* a signature matched: sig_hits and the host's alerts grew */
#define IDS_EV_FLOW_NEW 0x20     /* the flow's entry was created */
#define IDS_EV_FULL     0x40     /* shared state (p->shared): every field of what it touched */
/* what a shared packet between its flow's batch boundaries still writes its record for: it
 * made an entry (a flow, a host, a seen port, a scan token) */
#define IDS_EV_MADE     (IDS_EV_FLOW_NEW | IDS_EV_HOST_NEW | IDS_EV_PORT_NEW | IDS_EV_SCAN)   /* 0x2e */

static __always_inline struct nfx_ids_host *ids_host_get(__u32 saddr, __u32 *ev)
{
    struct nfx_ids_host *h = ids_hosts.lookup(&saddr);
    if (h)
        return h;
    struct nfx_ids_host nh = {};
    int r = ids_hosts.insert(&saddr, &nh);
    if (r == 0) {
        *ev |= IDS_EV_HOST_NEW;
        ids_global_add(NFX_IDS_G_HOSTS, 1);
    } else if (r != -IDS_EEXIST) {
        nfx_count(NFX_R_IDS_MAP_FULL);
        return 0;
    }
    return ids_hosts.lookup(&saddr);
}

/* Distinct destination ports per source: an insert into the seen-set succeeds once per
 * (source, port, proto). A port can only be new with a new flow (or with no flow entry, when
 * that map is full), so known flows skip the insert and its bucket lock. The scan alert uses
 * the same trick with a token key, so exactly one CPU sends it even if two cross the threshold
 * together (an atomic fetch-and-add whose result is used crashes LLVM 14). */
static __always_inline void ids_scan(struct nfx_pkt *p, struct nfx_ids_host *h, struct nfx_ids_cfg *c,
                                     __u64 now, int maybe_new, __u32 *ev)
{
    __u8 one = 1;
    int r;
    if (maybe_new) {
        struct nfx_ids_hostport hp = {};
        hp.saddr = p->key.saddr;
        hp.dport = p->key.dport;
        hp.proto = p->key.proto;
        r = ids_hostports.insert(&hp, &one);
        if (r == 0) {
            __sync_fetch_and_add(&h->dports, 1);
            ids_global_add(NFX_IDS_G_PORTS, 1);
            *ev |= IDS_EV_PORT_NEW;
        } else if (r != -IDS_EEXIST)
            nfx_count(NFX_R_IDS_MAP_FULL);
    }
    __u32 n = h->dports;
    if (!c->scan_threshold || n < c->scan_threshold || h->scan_alerted)
        return;
    struct nfx_ids_hostport token = {};
    token.saddr = p->key.saddr;
    token.pad = IDS_SCAN_TOKEN_PAD;
    r = ids_hostports.insert(&token, &one);
    if (r != 0) {
        if (r != -IDS_EEXIST)
            nfx_count(NFX_R_IDS_MAP_FULL);
        return;
    }
    ids_global_add(NFX_IDS_G_PORTS, 1);
    h->scan_alerted = 1;
    *ev |= IDS_EV_SCAN;
    nfx_count(NFX_R_IDS_SCAN_ALERT);
    ids_alert(&p->key, NFX_ALERT_SCAN, n, now, h);
}

/* Compare every used signature with the payload (which ends at the IP total length: Ethernet
 * padding is not payload). One load of the first IDS_WIN payload bytes serves every signature
 * that fits in them; the others load their own bytes (a helper call each). Two masked 8-byte
 * compares per signature: no per-byte loop for the verifier. */
static __always_inline void ids_match(struct xdp_md *ctx, struct nfx_pkt *p, __u32 l3_end,
                                      struct nfx_ids_flow *f, struct nfx_ids_host *h, __u64 now, __u32 *ev)
{
    /* zeroed: the verifier wants every byte a variable offset may reach initialised */
    __u8 win[IDS_WIN + NFX_IDS_SIG_LEN] = {};
    __u32 end = l3_end < p->len ? l3_end : p->len;
    __u32 avail = end > p->payload_off ? end - p->payload_off : 0;
    if (avail > IDS_WIN)
        avail = IDS_WIN;
    /* ((x - 1) & (2^k - 1)) + 1 is x itself here, in a form whose bounds the verifier sees */
    if (avail && bpf_xdp_load_bytes(ctx, p->payload_off, win, ((avail - 1) & (IDS_WIN - 1)) + 1))
        avail = 0;

    for (__u32 i = 0; i < NFX_IDS_MAX_SIGS; i++) {
        __u32 slot = i;
        struct nfx_ids_sig *s = ids_sigs.lookup(&slot);
        if (!s)
            break;
        __u32 len = s->len, off = s->offset;
        if (len == 0 || len > NFX_IDS_SIG_LEN)
            continue;
        if (s->proto && s->proto != p->key.proto)
            continue;
        if (p->payload_off + off + len > end)
            continue;
        __u64 w[2] = {0, 0};
        if (off + len <= avail) {
            __builtin_memcpy(w, win + (off & (IDS_WIN - 1)), sizeof(w));
        } else if (bpf_xdp_load_bytes(ctx, p->payload_off + off, w,
                                      ((len - 1) & (NFX_IDS_SIG_LEN - 1)) + 1)) {
            continue;
        }
        __u64 pat[2];
        __builtin_memcpy(pat, s->pattern, sizeof(pat));
        /* bytes load little-endian: the first `len` bytes are the low ones */
        __u64 m0 = len >= 8 ? ~0ULL : (1ULL << (len * 8)) - 1;
        __u64 m1 = len >= 16 ? ~0ULL : len <= 8 ? 0 : (1ULL << ((len - 8) * 8)) - 1;
        if (((w[0] ^ pat[0]) & m0) || ((w[1] ^ pat[1]) & m1))
            continue;
        __u64 *hits = ids_sig_hits.lookup(&slot);
        if (hits)
            (*hits)++;
        if (f)
            __sync_fetch_and_add(&f->sig_hits, 1);
        ids_global_add(NFX_IDS_G_SIG_HITS, 1);
        nfx_count(NFX_R_IDS_SIG_MATCH);
        *ev |= IDS_EV_SIG;
        ids_alert(&p->key, NFX_ALERT_SIG, s->id, now, h);
    }
}

/* ---- statelets (nfx_statelet.h): a mirrored packet's changes to ids_flows, ids_hosts, ids_hostports.
 * While the gate shares state an entry's statelet carries all its fields (IDS_EV_FULL): the
 * packets between two batch boundaries wrote nothing, and a host's counters are absolute, so
 * a later record of any flow of the host supersedes an earlier one. ---- */
#define IDS_FLOW_ALL   0x3f
#define IDS_FLOW_TOUCH (NFX_ST_BIT(NFX_STF_FLOW_PKTS) | NFX_ST_BIT(NFX_STF_FLOW_BYTES) | \
                        NFX_ST_BIT(NFX_STF_FLOW_LAST_NS))
#define IDS_HOST_ALL   0x3f
#define IDS_HOST_TOUCH (NFX_ST_BIT(NFX_STF_HOST_PKTS) | NFX_ST_BIT(NFX_STF_HOST_BYTES))

/* a member of the (source, port, proto) seen-set, or a source's scan token */
static __always_inline void ids_st_hostport(struct nfx_st *s, __u32 saddr, __u16 dport, __u8 proto, __u8 pad)
{
    struct nfx_ids_hostport hp = {};
    hp.saddr = saddr;
    hp.dport = dport;
    hp.proto = proto;
    hp.pad = pad;
    int k = nfx_st_open(s);
    if (k < 0)
        return;
    nfx_st_word(s, nfx_st_pack8(&hp, sizeof(hp)));
    nfx_st_word(s, 1);               /* the seen-set's value is always 1 */
    nfx_st_close(s, k, NFX_ST_IDS_HOSTPORTS, NFX_ST_SET, 1, NFX_ST_BIT(NFX_STF_VALUE), 0);
}

static __always_inline void ids_statelets(struct nfx_st *s, struct nfx_pkt *p, struct nfx_ids_flow *f,
                                          struct nfx_ids_host *h, __u32 ev)
{
    int k;
    ev = nfx_st_opaque(s, ev);
    /* shared between the flow's batch boundaries: the record goes out if the packet made an
     * entry. Branch-free (x is 0..0x2e, so x + 0x3f reaches bit 6 iff x > 0): a branch on ev
     * would have the verifier walk the rest twice */
    s->keep |= ((ev & IDS_EV_MADE) + 0x3f) >> 6;
    int created = ev & IDS_EV_FLOW_NEW;
    if (f && (k = nfx_st_open(s)) >= 0) {
        __u32 m = created | (ev & IDS_EV_FULL) ? IDS_FLOW_ALL : IDS_FLOW_TOUCH |
                  (ev & IDS_EV_FLAGS ? NFX_ST_BIT(NFX_STF_FLOW_TCP_FLAGS) : 0) |
                  (ev & IDS_EV_SIG ? NFX_ST_BIT(NFX_STF_FLOW_SIG_HITS) : 0);
        nfx_st_flow(s, &p->key);
        nfx_st_field(s, m, NFX_STF_FLOW_PKTS, f->pkts);
        nfx_st_field(s, m, NFX_STF_FLOW_BYTES, f->bytes);
        nfx_st_field(s, m, NFX_STF_FLOW_FIRST_NS, f->first_ns);
        nfx_st_field(s, m, NFX_STF_FLOW_LAST_NS, f->last_ns);
        nfx_st_field(s, m, NFX_STF_FLOW_SIG_HITS, f->sig_hits);
        nfx_st_field(s, m, NFX_STF_FLOW_TCP_FLAGS, f->tcp_flags);
        nfx_st_close(s, k, NFX_ST_IDS_FLOWS, NFX_ST_SET, 2, m, f->first_ns);
    }
    if (h && (k = nfx_st_open(s)) >= 0) {
        __u32 m = ev & (IDS_EV_HOST_NEW | IDS_EV_FULL) ? IDS_HOST_ALL : IDS_HOST_TOUCH |
                  (created ? NFX_ST_BIT(NFX_STF_HOST_FLOWS) : 0) |
                  (ev & IDS_EV_PORT_NEW ? NFX_ST_BIT(NFX_STF_HOST_DPORTS) : 0) |
                  (ev & (IDS_EV_SCAN | IDS_EV_SIG) ? NFX_ST_BIT(NFX_STF_HOST_ALERTS) : 0) |
                  (ev & IDS_EV_SCAN ? NFX_ST_BIT(NFX_STF_HOST_SCAN_ALERTED) : 0);
        nfx_st_word(s, p->key.saddr);
        nfx_st_field(s, m, NFX_STF_HOST_PKTS, h->pkts);
        nfx_st_field(s, m, NFX_STF_HOST_BYTES, h->bytes);
        nfx_st_field(s, m, NFX_STF_HOST_FLOWS, h->flows);
        nfx_st_field(s, m, NFX_STF_HOST_DPORTS, h->dports);
        nfx_st_field(s, m, NFX_STF_HOST_ALERTS, h->alerts);
        nfx_st_field(s, m, NFX_STF_HOST_SCAN_ALERTED, h->scan_alerted);
        nfx_st_close(s, k, NFX_ST_IDS_HOSTS, NFX_ST_SET, 1, m, 0);
    }
    if (ev & IDS_EV_PORT_NEW)
        ids_st_hostport(s, p->key.saddr, p->key.dport, p->key.proto, 0);
    if (ev & IDS_EV_SCAN)
        ids_st_hostport(s, p->key.saddr, 0, 0, IDS_SCAN_TOKEN_PAD);
}

/* what ids_inspect touched, for the statelets of a mirrored packet */
struct ids_touched {
    struct nfx_ids_flow *f;
    struct nfx_ids_host *h;
    __u32 ev;                /* IDS_EV_* */
};

static __always_inline void ids_inspect(struct xdp_md *ctx, struct nfx_pkt *p, struct nfx_ids_cfg *c,
                                        struct ids_touched *t)
{
    __u64 now = nfx_now();      /* the tick's time (nfx_clock.h): flows and alerts are seconds */
    __u32 l3_end = p->l3_end;
    int created = 0;
    __u32 ev = 0;
    ids_global_add(NFX_IDS_G_PKTS, 1);
    ids_global_add(NFX_IDS_G_BYTES, p->len);

    struct nfx_ids_flow *f = ids_flow_get(&p->key, now, &created);
    if (f) {
        __sync_fetch_and_add(&f->pkts, 1);
        __sync_fetch_and_add(&f->bytes, p->len);
        f->last_ns = now;
        if (p->tcp_flags & ~f->tcp_flags) {
            f->tcp_flags |= p->tcp_flags;
            ev |= IDS_EV_FLAGS;
        }
    }
    struct nfx_ids_host *h = ids_host_get(p->key.saddr, &ev);
    if (h) {
        __sync_fetch_and_add(&h->pkts, 1);
        __sync_fetch_and_add(&h->bytes, p->len);
        if (created)
            __sync_fetch_and_add(&h->flows, 1);
        ids_scan(p, h, c, now, created || !f, &ev);
    }
    if (c->nsigs)             /* kept by user space: no signatures, no payload load */
        ids_match(ctx, p, l3_end, f, h, now, &ev);
    t->f = f;
    t->h = h;
    t->ev = ev | (created ? IDS_EV_FLOW_NEW : 0);
}

/* What the IDS cannot inspect: no IPv4 flow to account, or no L4 header to read. Malformed
 * frames (truncated, bad header or total length) are not among them: those stay dropped. */
static __always_inline int ids_uninspectable(__u32 reason)
{
    return reason == NFX_R_ARP || reason == NFX_R_IPV6 || reason == NFX_R_VLAN || reason == NFX_R_NON_IP ||
           reason == NFX_R_FRAGMENT || reason == NFX_R_ICMP_NOT_ECHO || reason == NFX_R_UNSUPP_PROTO;
}

/* to the other side; an empty tx slot makes redirect_map return ABORTED: drop instead
 * (nfx_forward counted it) */
static __always_inline int ids_pass(struct xdp_md *ctx, struct nfx_port_cfg *pc, int side)
{
    int v = nfx_forward(ctx, pc, side == NFX_SIDE_IN ? NFX_SIDE_OUT : NFX_SIDE_IN);
    return v == XDP_REDIRECT ? v : XDP_DROP;
}

int nfx_ids(struct xdp_md *ctx)
{
    __u32 z = 0;
    struct nfx_ids_cfg *c = ids_cfg.lookup(&z);
    struct nfx_entry e;
    int r = nfx_nf_entry(ctx, &e, c);
    if (r != NFX_NF_PROCESS) {
        /* a passive IDS must not break what it cannot read (ARP, IPv6, path-MTU discovery):
         * forwarded unless configured to drop; counted either way, no state made */
        if (r == NFX_NF_LEFT && ids_uninspectable(e.p.reason)) {
            nfx_count(NFX_R_IDS_UNINSPECTED);
            e.verdict = c->drop_uninspected ? XDP_DROP : ids_pass(ctx, e.pc, e.side);
        }
        goto out;
    }
    int mirror = e.act == NFX_ACT_STATELET;   /* emit this packet's state update as a statelet */
    struct ids_touched t;
    ids_inspect(ctx, &e.p, c, &t);
    if (mirror) {            /* the only cost to unmirrored packets */
        struct nfx_st *st = nfx_st_begin_pkt(&e.p);
        if (st) {
            ids_statelets(st, &e.p, t.f, t.h, t.ev | (e.p.shared ? IDS_EV_FULL : 0));
            nfx_st_end(st, e.p.len);
        }
    }
    e.verdict = ids_pass(ctx, e.pc, e.side);
out:
    return nfx_nf_exit(ctx, &e);
}
