/* nfx_nat.h: the NAT's config, state entries and port pool. Python mirror: nfx/layout/nat.py. */
#ifndef NFX_NAT_H
#define NFX_NAT_H

#include "nfx_flow.h"

struct nfx_nat_cfg {
    __u32 inside_net;        /* network order */
    __u32 inside_mask;       /* network order */
    __u32 pool_base;         /* host order: first public address */
    __u32 pool_count;
    __u16 port_lo;           /* host order, inclusive */
    __u16 port_hi;
    __u32 ncpu;
    __u64 timeout_ns[4];     /* indexed by enum nfx_nat_timeout */
    __u32 host_quota;        /* most mappings one inside address may hold; 0 = no limit */
    __u32 pad;
};

enum nfx_nat_timeout { NFX_TO_UDP = 0, NFX_TO_TCP = 1, NFX_TO_TCP_CLOSED = 2, NFX_TO_ICMP = 3 };

/* value of nat_fwd (key: inside key) and nat_rev (key: key of return packets); `peer` is the
 * other map's key, so each entry finds its twin */
struct nfx_nat_entry {
    struct nfx_flow_key peer;
    __u64 pkts;
    __u64 bytes;
#ifdef NFX_NAT_V2
    __u64 max_len;           /* v2 layout (hot-upgrade conversion test): largest frame seen */
#endif
    __u64 created_ns;
    __u64 last_seen_ns;
    __u32 tcp_flags;         /* TCP flags seen in this direction, ORed */
    __u32 pad;
};

/* port pool allocation: one public (address, port, proto) per connection */
struct nfx_nat_port {
    __u32 addr;              /* network order */
    __u16 port;              /* network order */
    __u8  proto;
    __u8  pad;
};

/* statelet field bits of nat_fwd/nat_rev entries (struct field order; nfx_statelet.h) */
enum nfx_stf_nat { NFX_STF_NAT_PEER = 0, NFX_STF_NAT_PKTS, NFX_STF_NAT_BYTES, NFX_STF_NAT_CREATED_NS,
                   NFX_STF_NAT_LAST_SEEN_NS, NFX_STF_NAT_TCP_FLAGS };

#endif /* NFX_NAT_H */
