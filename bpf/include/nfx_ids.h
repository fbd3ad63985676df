/* nfx_ids.h: the IDS's state, signatures, config and alerts. Python mirror: nfx/layout/ids.py. */
#ifndef NFX_IDS_H
#define NFX_IDS_H

#include "nfx_flow.h"

struct nfx_ids_flow {
    __u64 pkts;
    __u64 bytes;
    __u64 first_ns;
    __u64 last_ns;
    __u32 sig_hits;
    __u32 tcp_flags;
};

struct nfx_ids_host {
    __u64 pkts;
    __u64 bytes;
    __u32 flows;             /* distinct flows seen from this source */
    __u32 dports;            /* distinct destination ports seen from this source */
    __u32 alerts;
    __u32 scan_alerted;
};

struct nfx_ids_hostport {    /* key of the (source, destination port) seen-set */
    __u32 saddr;
    __u16 dport;
    __u8  proto;
    __u8  pad;
};

#define NFX_IDS_MAX_SIGS 16
#define NFX_IDS_SIG_LEN  16

struct nfx_ids_sig {
    __u32 id;
    __u16 offset;            /* from the start of the L4 payload */
    __u8  len;               /* 0 = slot unused */
    __u8  proto;             /* 0 = any */
    __u8  pattern[NFX_IDS_SIG_LEN];
};

struct nfx_ids_cfg {
    __u32 scan_threshold;    /* distinct destination ports from one source */
    __u32 nsigs;
    __u32 drop_uninspected;  /* 0: forward what the IDS cannot inspect (default), 1: drop it */
    __u32 pad;
};

enum nfx_alert_kind { NFX_ALERT_SIG = 1, NFX_ALERT_SCAN = 2 };

struct nfx_ids_alert {       /* ringbuf record */
    __u64 ts_ns;
    struct nfx_flow_key key;
    __u32 kind;
    __u32 sig_id;            /* signature id, or distinct port count for a scan */
};

/* IDS global counters: per-CPU array of NFX_IDS_G_MAX */
/* FLOWS, HOSTS, PORTS count entries created in ids_flows, ids_hosts, ids_hostports: those LRU
 * tables evict without telling, so entries evicted = created - present (nfx/nfs/ids.py) */
enum nfx_ids_global { NFX_IDS_G_PKTS = 0, NFX_IDS_G_BYTES, NFX_IDS_G_FLOWS, NFX_IDS_G_HOSTS,
                      NFX_IDS_G_SIG_HITS, NFX_IDS_G_ALERTS, NFX_IDS_G_PORTS, NFX_IDS_G_MAX = 8 };

/* statelet field bits of ids_flows and ids_hosts entries (struct field order; nfx_statelet.h) */
enum nfx_stf_ids_flow { NFX_STF_FLOW_PKTS = 0, NFX_STF_FLOW_BYTES, NFX_STF_FLOW_FIRST_NS, NFX_STF_FLOW_LAST_NS,
                        NFX_STF_FLOW_SIG_HITS, NFX_STF_FLOW_TCP_FLAGS };
enum nfx_stf_ids_host { NFX_STF_HOST_PKTS = 0, NFX_STF_HOST_BYTES, NFX_STF_HOST_FLOWS, NFX_STF_HOST_DPORTS,
                        NFX_STF_HOST_ALERTS, NFX_STF_HOST_SCAN_ALERTED };

#endif /* NFX_IDS_H */
