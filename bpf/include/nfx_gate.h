/* nfx_gate.h: what happens to a flow's packets before the NF logic: per-flow marks, wildcard
 * filters for flows with no mark, and the gate's own config. Python mirror: nfx/layout/gate.py. */
#ifndef NFX_GATE_H
#define NFX_GATE_H

enum nfx_action {
    NFX_ACT_PROCESS  = 0,
    NFX_ACT_STATELET = 1,   /* process, and mirror the state update as a statelet */
    NFX_ACT_BUFFER   = 2,   /* copy to the buffer ring, drop the original */
    NFX_ACT_REDIRECT = 3,   /* send to the peer instance in mark.peer */
    NFX_ACT_TO_CTRL  = 4,   /* copy to the controller ring, drop the original */
    NFX_ACT_DROP     = 5,
    NFX_ACT_DUP_HOLD = 6,   /* dup's source: buffer the switch's tagged copies, process the rest */
    NFX_ACT_MAX      = 7,
};

/* per-flow mark; the gate takes the lock so mark, buffered and released change together */
struct nfx_mark {
    struct bpf_spin_lock lock;
    __u32 action;
    __u32 buffered;
    __u32 released;
    __u32 last_release;  /* release sequence number of the flow's latest released packet */
    __u32 peer;      /* tx devmap slot of the peer for REDIRECT */
    __u32 tag;       /* reserved */
    __u32 epoch;     /* which move set the mark */
};

#define NFX_MAX_FILTERS 8
#define NFX_FILTER_USED  1
#define NFX_FILTER_BIDIR 2   /* also match with source and destination swapped */

/* wildcard filter for flows with no per-flow mark; first match in slot order wins */
struct nfx_filter {
    __u32 saddr;
    __u32 smask;
    __u32 daddr;
    __u32 dmask;
    __u16 sport;     /* 0 = any */
    __u16 dport;     /* 0 = any */
    __u8  proto;     /* 0 = any */
    __u8  action;
    __u8  flags;
    __u8  pad;
    __u32 peer;
    __u32 tag;
};

/* what the gate has to look at; lets the per-packet path skip empty tables (array of 1) */
struct nfx_gate_cfg {
    __u32 marks;     /* nonzero while per-flow marks may exist */
    __u32 filters;   /* used filter slots are below this */
    __u32 share;     /* nonzero: PROCESS packets are mirrored as if marked STATELET at their
                      * flow's batch boundaries (share_batch), their records led by a STAMP
                      * statelet (nfx_statelet.h) */
    __u32 share_batch;   /* the cluster's S_batch: with share on, a PROCESS packet writes a record
                          * only when its stamp is a multiple of it, it came unstamped, or the NF
                          * makes or ends an entry (0 or 1: every packet) */
};

#endif /* NFX_GATE_H */
