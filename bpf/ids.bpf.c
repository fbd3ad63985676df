/* IDS: a passive intrusion detector. Every handled packet is forwarded unchanged (except the
 * MACs) to the other side; on the way it updates per-flow and per-source-host counters, counts
 * the distinct destination ports each source touches (one scan alert when that reaches the
 * threshold), and matches the L4 payload against a run-time signature table. Alerts go to user
 * space through the ids_alerts ringbuf. */
#include "nfx_nf.h"

#ifndef NFX_IDS_RING_PAGES
#define NFX_IDS_RING_PAGES 64            /* 256 KiB: about 6500 alert records */
#endif

#define IDS_EEXIST 17
#define IDS_WIN    64                    /* payload bytes loaded once per packet (power of 2) */

/* ids_hostports is a seen-set: the key is what counts, the value is unused. A key with pad=1
 * (port and proto 0) is a source's "scan alert already sent" token. */
#define IDS_SCAN_TOKEN_PAD 1

NFX_TABLE("hash", struct nfx_flow_key, struct nfx_ids_flow, ids_flows, NFX_MAX_FLOWS);
NFX_TABLE("hash", __u32, struct nfx_ids_host, ids_hosts, NFX_MAX_FLOWS);
NFX_TABLE("hash", struct nfx_ids_hostport, __u8, ids_hostports, NFX_MAX_FLOWS);
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

static __always_inline struct nfx_ids_host *ids_host_get(__u32 saddr)
{
    struct nfx_ids_host *h = ids_hosts.lookup(&saddr);
    if (h)
        return h;
    struct nfx_ids_host nh = {};
    int r = ids_hosts.insert(&saddr, &nh);
    if (r == 0) {
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
                                     __u64 now, int maybe_new)
{
    __u8 one = 1;
    int r;
    if (maybe_new) {
        struct nfx_ids_hostport hp = {};
        hp.saddr = p->key.saddr;
        hp.dport = p->key.dport;
        hp.proto = p->key.proto;
        r = ids_hostports.insert(&hp, &one);
        if (r == 0)
            __sync_fetch_and_add(&h->dports, 1);
        else if (r != -IDS_EEXIST)
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
    h->scan_alerted = 1;
    nfx_count(NFX_R_IDS_SCAN_ALERT);
    ids_alert(&p->key, NFX_ALERT_SCAN, n, now, h);
}

/* Compare every used signature with the payload (which ends at the IP total length: Ethernet
 * padding is not payload). One load of the first IDS_WIN payload bytes serves every signature
 * that fits in them; the others load their own bytes (a helper call each). Two masked 8-byte
 * compares per signature: no per-byte loop for the verifier. */
static __always_inline void ids_match(struct xdp_md *ctx, struct nfx_pkt *p, __u32 l3_end,
                                      struct nfx_ids_flow *f, struct nfx_ids_host *h, __u64 now)
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
        ids_alert(&p->key, NFX_ALERT_SIG, s->id, now, h);
    }
}

static __always_inline void ids_inspect(struct xdp_md *ctx, struct nfx_pkt *p, struct nfx_ids_cfg *c)
{
    __u64 now = bpf_ktime_get_ns();
    __u32 l3_end = sizeof(struct ethhdr) + bpf_ntohs(p->ip->tot_len);
    int created = 0;
    ids_global_add(NFX_IDS_G_PKTS, 1);
    ids_global_add(NFX_IDS_G_BYTES, p->len);

    struct nfx_ids_flow *f = ids_flow_get(&p->key, now, &created);
    if (f) {
        __sync_fetch_and_add(&f->pkts, 1);
        __sync_fetch_and_add(&f->bytes, p->len);
        f->last_ns = now;
        if (p->tcp_flags & ~f->tcp_flags)
            f->tcp_flags |= p->tcp_flags;
    }
    struct nfx_ids_host *h = ids_host_get(p->key.saddr);
    if (h) {
        __sync_fetch_and_add(&h->pkts, 1);
        __sync_fetch_and_add(&h->bytes, p->len);
        if (created)
            __sync_fetch_and_add(&h->flows, 1);
        ids_scan(p, h, c, now, created || !f);
    }
    if (c->nsigs)             /* kept by user space: no signatures, no payload load */
        ids_match(ctx, p, l3_end, f, h, now);
}

int nfx_ids(struct xdp_md *ctx)
{
    int verdict = XDP_DROP;
    __u32 z = 0, peer = 0;
    struct nfx_pkt p = {};
    struct nfx_port_cfg *pc = nfx_port_cfg.lookup(&z);
    struct nfx_ids_cfg *c = ids_cfg.lookup(&z);
    if (!pc || !c)
        goto out;
    int side = nfx_ingress_side(ctx, pc);
    if (side < 0) {
        nfx_count(NFX_R_NO_PORT);
        goto out;
    }
    __u32 reason = nfx_parse(ctx, &p);
    nfx_count(reason);
    if (reason != NFX_R_OK)
        goto out;
    __u32 act = nfx_gate(&p.key, &peer);
    if (act != NFX_ACT_PROCESS && act != NFX_ACT_STATELET) {
        verdict = nfx_gate_act(ctx, act, peer);
        goto out;
    }
    int mirror = act == NFX_ACT_STATELET;   /* emit this packet's state update as a statelet */
    ids_inspect(ctx, &p, c);
    verdict = nfx_forward(ctx, pc, side == NFX_SIDE_IN ? NFX_SIDE_OUT : NFX_SIDE_IN);
    /* an empty tx slot makes redirect_map return ABORTED: drop instead (already counted) */
    if (verdict != XDP_REDIRECT)
        verdict = XDP_DROP;
out:
    return nfx_exit(verdict);
}
