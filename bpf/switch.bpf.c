/* switch: an SDN switch on tc clsact ingress of every port. A packet's rule is the exact
 * 5-tuple entry if there is one, else the first wildcard slot that matches (slot order is
 * priority), else it misses and is dropped. A rule outputs to one port (redirect) or several
 * (clones, then a redirect), may rewrite the IPv4 TOS byte, copy the packet to the
 * controller ring, or drop. Non-IPv4 frames get an all-zero key, so only wildcards that
 * match on in_port alone (or nothing) switch them: that is how ARP is forwarded.
 * A rule may be armed with a token: it is passed over (lower slots and wildcards decide) until
 * a trigger carrying that token has arrived on an NF-facing port. Triggers are consumed here.
 * nfx's reserved marks (TOS NFX_TOS_IBC, NFX_TOS_FIRE, NFX_TOS_HSL) are dropped where a host
 * could forge them: see sw_reserved. SHarP's HSL messages (nfx_hsl.h) from an instance, and the
 * controller's test packet, go to the controller ring and no further.
 * Each rule's counter stamps its last hit (per CPU), for the controller's idle timeouts.
 * dup: a rule with NFX_SW_TAG gives each port's copy its tag as Ethernet source MAC (nfx_move.h:
 * the first port's copy is the move's source's, the second its destination's); a frame that
 * arrives already carrying a tag is forged (no NF sends one) and dropped, unless it came over a
 * trunk (NFX_SW_PORT_TRUNK): the joined site's switch tagged it, and the tag says which copy it is. */
#include "nfx_bpf.h"
#include "nfx_move.h"
#include "nfx_switch.h"
#include "nfx_hsl.h"

_Static_assert(NFX_SW_RULE_HSL >= NFX_SW_MAX_RULES, "the HSL record id must be no rule's");

#ifndef NFX_SW_MAX_EXACT
#define NFX_SW_MAX_EXACT 65536
#endif
#ifndef NFX_SW_RING_PAGES
#define NFX_SW_RING_PAGES 4096      /* 16 MiB of controller packets waiting to be read: SHarP's detection
                                     * at 100k pps sends the controller tens of thousands */
#endif
#define SW_SNAP 1536                /* bytes of a packet copied to the controller */
#define SW_PULL 134                 /* eth + max IPv4 header + max TCP header */

BPF_HASH(sw_exact, struct nfx_flow_key, __u32, NFX_SW_MAX_EXACT);
BPF_ARRAY(sw_wild, struct nfx_sw_wild, NFX_SW_MAX_WILD);
BPF_ARRAY(sw_rules, struct nfx_sw_rule, NFX_SW_MAX_RULES);
BPF_PERCPU_ARRAY(sw_counters, struct nfx_sw_counter, NFX_SW_MAX_RULES);
/* token -> ktime it fired; LRU so that nothing can fill it for good (only NF ports insert) */
BPF_TABLE("lru_hash", __u64, __u64, sw_fired, NFX_SW_MAX_FIRED);
BPF_HASH(sw_ports, __u32, __u32, NFX_SW_PORT_SLOTS);   /* ifindex -> NFX_SW_PORT_* role */
BPF_ARRAY(sw_cfg, struct nfx_sw_cfg, 1);
/* epoch -> 1: the test packets the controller is about to inject on a host port */
BPF_HASH(sw_hsl_epochs, __u32, __u32, NFX_HSL_EPOCHS);
BPF_PERCPU_ARRAY(sw_reasons, __u64, NFX_SW_R_MAX);
BPF_RINGBUF_OUTPUT(sw_ctrl, NFX_SW_RING_PAGES);

/* a ringbuf record is built here, then output with its real length (a fixed-size reserve
 * per packet is about 3x slower, PLATFORM.md) */
struct sw_ctrl_rec {
    struct nfx_sw_ctrl_hdr hdr;
    __u8 data[SW_SNAP];
};
BPF_PERCPU_ARRAY(sw_scratch, struct sw_ctrl_rec, 1);

static __always_inline void sw_note(__u32 i)
{
    __u64 *v = sw_reasons.lookup(&i);
    if (v)
        (*v)++;
}

/* TC_ACT_* onto the XDP-indexed verdict slots; the one exit of the program */
static __always_inline int sw_exit(int act)
{
    __u32 slot = act == TC_ACT_REDIRECT ? NFX_V_REDIRECT :
                 act == TC_ACT_SHOT     ? NFX_V_DROP :
                 act == TC_ACT_OK       ? NFX_V_PASS : NFX_V_ABORTED;
    nfx_count(slot);
    return act;
}

/* eth/IPv4/{TCP,UDP,ICMP echo} into k, the same key nfx_parse builds, with its IPv4 checks.
 * Fields are filled as far as parsing gets, so a fragment or an odd protocol still matches on
 * addresses. *ip_ok says an IPv4 header whose TOS may be rewritten sits right after the
 * ethernet header. */
static __always_inline __u32 sw_parse(struct __sk_buff *skb, struct nfx_flow_key *k, int *ip_ok, __u32 *l4_off)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    __u32 r = nfx_parse_eth(data, end);
    if (r != NFX_R_OK)
        return r;

    struct iphdr *ip = data + sizeof(struct ethhdr);
    r = nfx_ipv4_fixed(ip, end);
    if (r != NFX_R_OK)
        return r;
    *ip_ok = 1;
    k->saddr = ip->saddr;
    k->daddr = ip->daddr;
    k->proto = ip->protocol;
    __u32 iplen = ip->ihl * 4;
    if ((void *)ip + iplen > end)
        return NFX_R_TRUNC_IP;
    r = nfx_ipv4_whole(ip);
    if (r != NFX_R_OK)
        return r;

    void *l4 = (void *)ip + iplen;
    *l4_off = ETH_HLEN + iplen;
    if (ip->protocol == IPPROTO_UDP) {
        struct udphdr *uh = l4;
        if ((void *)(uh + 1) > end)
            return NFX_R_TRUNC_L4;
        k->sport = uh->source;
        k->dport = uh->dest;
    } else if (ip->protocol == IPPROTO_TCP) {
        struct tcphdr *th = l4;
        if ((void *)(th + 1) > end)
            return NFX_R_TRUNC_L4;
        k->sport = th->source;
        k->dport = th->dest;
    } else if (ip->protocol == IPPROTO_ICMP) {
        struct icmphdr *ic = l4;
        if ((void *)(ic + 1) > end)
            return NFX_R_TRUNC_L4;
        if (ic->type == ICMP_ECHO)
            k->sport = ic->un.echo.id;
        else if (ic->type == ICMP_ECHOREPLY)
            k->dport = ic->un.echo.id;
        else
            return NFX_R_ICMP_NOT_ECHO;
    } else {
        return NFX_R_UNSUPP_PROTO;
    }
    return NFX_R_OK;
}

static __always_inline int sw_wild_match(struct nfx_sw_wild *w, struct nfx_flow_key *k, __u32 in_port)
{
    return (!w->in_port || w->in_port == in_port) &&
           ((k->saddr & w->smask) == w->saddr) && ((k->daddr & w->dmask) == w->daddr) &&
           (!w->sport || w->sport == k->sport) && (!w->dport || w->dport == k->dport) &&
           (!w->proto || w->proto == k->proto);
}

/* rule `rid`, or 0 if there is none or it is armed with a token that has not fired yet (the
 * packet then looks further) */
static __always_inline struct nfx_sw_rule *sw_rule(__u32 rid)
{
    struct nfx_sw_rule *r = sw_rules.lookup(&rid);
    if (r && r->token && !sw_fired.lookup(&r->token)) {
        nfx_count(NFX_R_SW_ARMED);
        return 0;
    }
    return r;
}

/* this packet's rule (its id in *rid), or 0 on a miss */
static __always_inline struct nfx_sw_rule *sw_lookup(struct nfx_flow_key *k, int exact_ok, __u32 in_port,
                                                     __u32 *rid)
{
    struct nfx_sw_rule *r;
    if (exact_ok) {
        __u32 *id = sw_exact.lookup(k);
        if (id && (r = sw_rule(*id))) {
            nfx_count(NFX_R_SW_HIT_EXACT);
            *rid = *id;
            return r;
        }
    }
#pragma unroll
    for (__u32 i = 0; i < NFX_SW_MAX_WILD; i++) {
        __u32 slot = i;
        struct nfx_sw_wild *w = sw_wild.lookup(&slot);
        if (!w || !w->used)
            continue;
        if (sw_wild_match(w, k, in_port) && (r = sw_rule(w->rule))) {
            nfx_count(NFX_R_SW_HIT_WILD);
            *rid = w->rule;
            return r;
        }
    }
    return 0;
}

/* spread rules (NFX_SW_SPREAD): the rule's group, by rule id, and how many packets each of its
 * ports got (rule id * NFX_SW_SPREAD_PORTS + index), for the controller and the tests */
BPF_ARRAY(sw_spread, struct nfx_sw_spread, NFX_SW_MAX_RULES);
BPF_PERCPU_ARRAY(sw_spread_hits, __u64, NFX_SW_MAX_RULES * NFX_SW_SPREAD_PORTS);

/* a 32-bit hash of the flow that both its directions share: each pair of addresses and ports
 * taken in order, then mixed (murmur3's finalizer) so the high bits the index uses are even.
 * Python mirror: nfx/control/spread.py spread_hash */
static __always_inline __u32 sw_spread_hash(struct nfx_flow_key *k)
{
    __u32 a = k->saddr < k->daddr ? k->saddr : k->daddr;
    __u32 b = k->saddr < k->daddr ? k->daddr : k->saddr;
    __u32 p = k->sport < k->dport ? k->sport : k->dport;
    __u32 q = k->sport < k->dport ? k->dport : k->sport;
    __u32 h = a * 0x9e3779b1u;
    h = (h ^ b) * 0x85ebca6bu;
    h = (h ^ (p << 16 | q)) * 0xc2b2ae35u;
    h ^= k->proto;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* the port spread rule `rid` sends this packet to, or 0 (no group: dropped as no port) */
static __always_inline __u32 sw_spread_port(__u32 rid, struct nfx_flow_key *k)
{
    struct nfx_sw_spread *g = sw_spread.lookup(&rid);
    if (!g)
        return 0;
    __u32 n = g->nports;
    if (n < 1 || n > NFX_SW_SPREAD_PORTS)
        return 0;
    __u64 i = ((__u64)sw_spread_hash(k) * n) >> 32;    /* 64-bit: a 32-bit index loses its bound */
    if (g->mode == NFX_SW_SPREAD_SLICE) {
        __u32 o = (__u32)bpf_ntohs(k->dport) - g->lo;      /* wraps below lo: outside too */
        if (g->span && o < g->span)
            i = ((__u64)(o + 1) * n - 1) / g->span;
        else
            sw_note(NFX_SW_R_SPREAD_NO_SLICE);
    }
    if (i >= n || i >= NFX_SW_SPREAD_PORTS)
        return 0;
    __u32 slot = rid * NFX_SW_SPREAD_PORTS + (__u32)i;
    __u64 *hits = sw_spread_hits.lookup(&slot);
    if (hits)
        (*hits)++;
    return g->ports[i];
}

/* IPv4 TOS := tos, header checksum fixed incrementally over the 16-bit word holding it */
static __always_inline void sw_set_tos(struct __sk_buff *skb, __u8 tos)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + ETH_HLEN;
    if ((void *)(ip + 1) > end || ip->tos == tos)
        return;
    __u16 old = *(__u16 *)ip;
    ip->tos = tos;
    __u16 new = *(__u16 *)ip;
    bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 2);
}

/* copy the packet (up to SW_SNAP bytes) to the controller ring; 1: copied */
static __always_inline int sw_to_ctrl(struct __sk_buff *skb, __u32 in_port, __u32 rule)
{
    __u32 z = 0;
    struct sw_ctrl_rec *r = sw_scratch.lookup(&z);
    if (!r)
        return 0;
    __u64 len = skb->len;           /* 64-bit: a 32-bit copy would be re-extended and lose its bounds */
    if (len > SW_SNAP)
        len = SW_SNAP;
    /* two separate checks the verifier can follow: the barriers stop LLVM from folding them
     * into one unsigned range test that loses the lower bound */
    asm volatile("" : "+r"(len));
    if (len < 1)
        return 0;
    asm volatile("" : "+r"(len));
    if (len > SW_SNAP)
        return 0;
    if (bpf_skb_load_bytes(skb, 0, r->data, len))
        return 0;
    r->hdr.len = len;
    r->hdr.in_port = in_port;
    r->hdr.rule = rule;
    r->hdr.pad = 0;
    r->hdr.ts_ns = bpf_ktime_get_ns();
    if (sw_ctrl.ringbuf_output(r, sizeof(r->hdr) + len, 0)) {
        nfx_count(NFX_R_SW_RING_FULL);
        return 0;
    }
    return 1;
}

/* a trigger (TOS NFX_TOS_FIRE, UDP, payload NFX_FIRE_MAGIC then a token): record that the
 * token fired. Only the first arrival is kept, so the stamp says when the rules took force. */
static __always_inline int sw_fire(struct __sk_buff *skb, __u32 l4_off)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + ETH_HLEN;
    if ((void *)(ip + 1) > end || ip->tos != NFX_TOS_FIRE || l4_off > 128)
        return 0;
    struct nfx_fire_payload *f = data + l4_off + sizeof(struct udphdr);
    if ((void *)(f + 1) > end || f->magic != bpf_htonl(NFX_FIRE_MAGIC) || !f->token)
        return 0;
    __u64 token = f->token, now = bpf_ktime_get_ns();
    if (sw_fired.insert(&token, &now) && !sw_fired.lookup(&token))
        nfx_count(NFX_R_SW_FIRE_FULL);
    nfx_count(NFX_R_SW_FIRED);
    return 1;
}

/* the controller's IBC: its magic, then the epoch the controller wrote into sw_cfg before
 * sending it (both in network order, at the start of the L4 payload) */
static __always_inline int sw_ibc_expected(struct __sk_buff *skb, __u8 proto, __u32 l4_off)
{
    __u32 z = 0;
    struct nfx_sw_cfg *c = sw_cfg.lookup(&z);
    if (!c || !c->ibc_epoch || l4_off > 128)
        return 0;
    __u32 off = l4_off + 8;
    if (proto == IPPROTO_TCP) {
        __u8 doff = 0;
        if (bpf_skb_load_bytes(skb, l4_off + 12, &doff, 1))
            return 0;
        off = l4_off + (doff >> 4) * 4;
    }
    __u32 w[2] = {};
    if (bpf_skb_load_bytes(skb, off, w, sizeof(w)))
        return 0;
    return w[0] == bpf_htonl(NFX_IBC_MAGIC) && bpf_ntohl(w[1]) == c->ibc_epoch;
}

/* an HSL message (TOS NFX_TOS_HSL, UDP, NFX_HSL_MAGIC first). From an NF port (an agent's ACK
 * or DONE) any kind goes to the controller. From anywhere else only the controller's TEST of an
 * epoch it put in sw_hsl_epochs is taken: it was injected on the host's veth so that it queues
 * behind the flows' packets, and its arrival here tells the controller they all passed. Returns
 * 1: consumed, -1: forged, 0: an ordinary packet (a malformed message from an NF port). */
static __always_inline int sw_hsl(struct __sk_buff *skb, __u32 reason, __u8 proto, __u32 l4_off,
                                  __u32 in_port, __u32 roles)
{
    struct nfx_hsl_hdr h = {};
    int ok = reason == NFX_R_OK && proto == IPPROTO_UDP && l4_off <= 128 &&
             !bpf_skb_load_bytes(skb, l4_off + sizeof(struct udphdr), &h, sizeof(h)) &&
             h.magic == bpf_htonl(NFX_HSL_MAGIC);
    if (roles & NFX_SW_PORT_NF) {
        if (!ok)
            return 0;
        if (sw_to_ctrl(skb, in_port, NFX_SW_RULE_HSL))
            sw_note(NFX_SW_R_HSL);  /* else lost to a full ring, counted there */
        return 1;
    }
    __u32 epoch = h.epoch;
    if (!ok || h.kind != NFX_HSL_TEST || !sw_hsl_epochs.lookup(&epoch)) {
        sw_note(NFX_SW_R_HSL_FORGED);
        return -1;
    }
    if (sw_to_ctrl(skb, in_port, NFX_SW_RULE_HSL))
        sw_note(NFX_SW_R_HSL_TEST);
    return 1;
}

/* nfx's reserved marks, on an IPv4 packet that arrived on a port of role `roles`. Triggers are
 * taken only from NF-facing ports (the source's agent sends them there); from anywhere else
 * they are forged. An IBC from a port that does not face an NF is forged unless it is the
 * controller's: the controller injects its IBCs on the host's veth, so they share the flow's
 * FIFO into this port, and a host could send the same bytes; what tells them apart is the epoch,
 * which the controller writes into sw_cfg just before it sends (nfx/control/steer.py). The NF's
 * gate checks that epoch against the move once more. HSL messages: see sw_hsl. Returns 1:
 * consumed (a trigger, an HSL message), -1: forged (drop), 0: an ordinary packet, 2: the
 * controller's IBC (forwarded like an ordinary packet, and counted once it is). */
static __always_inline int sw_reserved(struct __sk_buff *skb, __u32 reason, __u8 proto, __u32 l4_off,
                                       __u32 in_port)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + ETH_HLEN;
    if ((void *)(ip + 1) > end)
        return 0;
    __u8 tos = ip->tos;
    if (tos != NFX_TOS_FIRE && tos != NFX_TOS_IBC && tos != NFX_TOS_HSL)
        return 0;                   /* every ordinary packet: no port lookup */
    __u32 *role = sw_ports.lookup(&in_port);
    __u32 roles = role ? *role : 0;
    if (tos == NFX_TOS_HSL)
        return sw_hsl(skb, reason, proto, l4_off, in_port, roles);
    if (tos == NFX_TOS_FIRE) {
        if (!(roles & NFX_SW_PORT_NF))
            return -1;
        return reason == NFX_R_OK && proto == IPPROTO_UDP && sw_fire(skb, l4_off);
    }
    if (tos == NFX_TOS_IBC && !(roles & NFX_SW_PORT_NF))
        return reason == NFX_R_OK && sw_ibc_expected(skb, proto, l4_off) ? 2 : -1;
    return 0;
}

/* 1: the frame carries a dup tag as its source MAC */
static __always_inline int sw_dup_tagged(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return 0;
    __u32 hi = 0;
    __builtin_memcpy(&hi, eth->h_source, 4);
    return hi == bpf_htonl(NFX_DUP_TAG_HI) && eth->h_source[4] == NFX_DUP_TAG_B4 &&
           eth->h_source[5] >= NFX_DUP_TAG_SRC && eth->h_source[5] <= NFX_SW_MAX_PORTS;
}

/* 1: the port is a trunk to a joined site (looked up only for a tagged frame) */
static __always_inline int sw_trunk(__u32 in_port)
{
    __u32 *role = sw_ports.lookup(&in_port);
    return role && (*role & NFX_SW_PORT_TRUNK);
}

/* the copy to the rule's port i (0-based) carries tag i + 1 */
static __always_inline void sw_tag(struct __sk_buff *skb, __u32 i)
{
    __u8 mac[6] = {NFX_DUP_TAG_HI >> 24, (NFX_DUP_TAG_HI >> 16) & 0xff, (NFX_DUP_TAG_HI >> 8) & 0xff,
                   NFX_DUP_TAG_HI & 0xff, NFX_DUP_TAG_B4, i + 1};
    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), mac, 6, 0);
}

#include "nfx_sw_stamp.h"

int nfx_switch(struct __sk_buff *skb)
{
    __u32 in_port = skb->ingress_ifindex;
    /* headers may sit past the linear part (e.g. after GRO); make them reachable */
    __u32 want = skb->len < SW_PULL ? skb->len : SW_PULL;
    if ((void *)(long)skb->data + want > (void *)(long)skb->data_end)
        bpf_skb_pull_data(skb, want);

    struct nfx_flow_key k = {};
    int ip_ok = 0;
    __u32 l4_off = 0;
    __u32 reason = sw_parse(skb, &k, &ip_ok, &l4_off);
    nfx_count(reason);

    int act = TC_ACT_SHOT;
    if (sw_dup_tagged(skb) && !sw_trunk(in_port)) {
        nfx_count(NFX_R_FORGED);
        goto out;
    }
    int ibc = 0;
    if (ip_ok) {
        int res = sw_reserved(skb, reason, k.proto, l4_off, in_port);
        if (res < 0)
            nfx_count(NFX_R_FORGED);
        if (res == 1 || res < 0)
            goto out;               /* consumed (a trigger, an HSL message) or forged */
        ibc = res == 2;
    }
    __u32 rid = 0;
    struct nfx_sw_rule *r = sw_lookup(&k, reason == NFX_R_OK, in_port, &rid);
    if (!r || !r->used) {
        nfx_count(NFX_R_SW_MISS);
        goto out;
    }
    struct nfx_sw_counter *c = sw_counters.lookup(&rid);
    if (c) {
        c->pkts++;
        c->bytes += skb->len;
        c->last_ns = bpf_ktime_get_ns();   /* idle timeouts: user space takes the max over CPUs */
    }
    __u32 a = r->actions;
    /* the controller sees the packet as it arrived */
    if (a & NFX_SW_TO_CTRL)
        sw_to_ctrl(skb, in_port, rid);
    if (a & NFX_SW_DROP)
        goto out;
    if (ip_ok && (a & NFX_SW_SET_TOS))
        sw_set_tos(skb, r->tos);
    else if (ip_ok && (a & NFX_SW_CLEAR_TOS))
        sw_set_tos(skb, 0);
    sw_stamp(skb, r, &k, reason, in_port);
    if (!(a & NFX_SW_OUTPUT))
        goto out;                   /* to the controller only, or no action: dropped */
    __u32 n = r->nports;
    if (n < 1 || n > NFX_SW_MAX_PORTS) {
        nfx_count(NFX_R_NO_PORT);
        goto out;
    }
    /* ports[1..] get clones; ports[0] (or the spread group's pick) the packet itself once we return */
    __u32 out0 = a & NFX_SW_SPREAD ? sw_spread_port(rid, &k) : r->ports[0];
    if (!out0) {
        nfx_count(NFX_R_NO_PORT);
        goto out;
    }
    __u32 tag = a & NFX_SW_TAG;
#pragma unroll
    for (__u32 i = 1; i < NFX_SW_MAX_PORTS; i++) {
        if (i < n) {
            if (tag)
                sw_tag(skb, i);
            if (bpf_clone_redirect(skb, r->ports[i], 0))
                nfx_count(NFX_R_SW_CLONE_FAIL);
        }
    }
    if (tag)
        sw_tag(skb, 0);
    act = bpf_redirect(out0, 0);
    if (act != TC_ACT_REDIRECT) {
        nfx_count(NFX_R_REDIRECT_FAIL);
        act = TC_ACT_SHOT;
    } else if (ibc) {
        /* past its rule lookup: a rule changed from now on decides only for packets behind it */
        sw_note(NFX_SW_R_IBC);
    }
out:
    return sw_exit(act);
}
