/* nfx.h: every layout that crosses the kernel/user line, and the parse helpers all programs share.
 * Python mirrors the structs once in nfx/layout.py; tests/bpf/test_layout.py checks the mirror
 * against what BCC parsed. Multi-byte address/port fields are in network byte order, as on the wire.
 * Bump NFX_LAYOUT_VERSION whenever a struct below changes. */
#ifndef NFX_H
#define NFX_H

#define NFX_LAYOUT_VERSION 2

/* ---- flow identity ---------------------------------------------------------------------- */
/* ICMP echo: the identifier is the "port" on the host side: request sport=id dport=0,
 * reply sport=0 dport=id, so a reply's key is the request's key reversed. */
struct nfx_flow_key {
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u8  proto;
    __u8  pad[3];
};

/* ---- gate: what happens to a flow's packets before the NF logic -------------------------- */
enum nfx_action {
    NFX_ACT_PROCESS  = 0,
    NFX_ACT_STATELET = 1,   /* process, and mirror the state update as a statelet */
    NFX_ACT_BUFFER   = 2,   /* copy to the buffer ring, drop the original */
    NFX_ACT_REDIRECT = 3,   /* send to the peer instance in mark.peer */
    NFX_ACT_TO_CTRL  = 4,   /* copy to the controller ring, drop the original */
    NFX_ACT_DROP     = 5,
    NFX_ACT_MAX      = 6,
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
};

/* ---- moves: buffering, release, redirect, in-band control ------------------------------- */
#define NFX_TOS_IBC       0xfc         /* IPv4 TOS of an in-band control packet (DiST's IBCpkt) */
#define NFX_IBC_MAGIC     0x6e666962u  /* "nfib", first payload word of an IBC packet */
/* a trigger: an IPv4/UDP packet a source instance sends its switches to fire armed rules */
#define NFX_TOS_FIRE      0xf8
#define NFX_FIRE_MAGIC    0x6e666672u  /* "nffr", first payload word of a trigger (network order) */

struct nfx_fire_payload {            /* the trigger's UDP payload */
    __u32 magic;
    __u32 pad;
    __u64 token;                     /* opaque: the armed rules' token, byte for byte */
};

#define NFX_MAX_PKT       1536
#define NFX_RELEASE_SLOTS 4096

/* how a packet reached the NF */
#define NFX_RX_PEER     1   /* over a peer link: redirected by another instance */
#define NFX_RX_RELEASED 2   /* released from this instance's own buffer */
#define NFX_RX_INJECTED 4   /* handed in by the agent (the controller's buffer): processed as is */

enum nfx_buf_kind { NFX_BUF_PACKET = 1, NFX_BUF_TO_CTRL = 2, NFX_BUF_IBC = 3 };

/* buffer ringbuf record: this header, then `len` packet bytes */
struct nfx_buf_hdr {
    __u64 ts_ns;
    struct nfx_flow_key key;
    __u32 len;
    __u32 epoch;
    __u8  kind;
    __u8  side;
    __u8  rx;
    __u8  pad[5];
};

/* one packet for the release path: the agent fills slots, a live test run replays them */
struct nfx_release_slot {
    __u32 len;
    __u8  side;
    __u8  rx;                /* NFX_RX_RELEASED or NFX_RX_INJECTED */
    __u16 pad;
    __u32 pad2[2];
    __u8  data[NFX_MAX_PKT];
};

/* the move an instance takes part in (array of 1): written by its agent only */
struct nfx_move_cfg {
    __u32 epoch;             /* marks set for this move carry it (0: no move) */
    __u32 drain_epoch;       /* marks of this epoch may flip to PROCESS once fully released */
    __u32 flushed_seq;       /* every released packet up to this release sequence number has left */
    __u32 op;                /* order-preserving: switch-path packets before the switch's IBC drop */
    __u32 peer_cut;          /* the source's cut is in, on both sides (opennf: at the controller) */
    __u32 pad;
};

/* what the program records during a move (array of 1): written by the program only, so the
 * agent never clobbers it; the agent zeroes it between moves */
struct nfx_move_state {
    __u32 ibc_switch[2];     /* by side: the IBC arrived from the switch */
    __u32 ibc_peer[2];       /* by side: the IBC arrived from the source instance */
    __u32 release_cursor;    /* release slots consumed so far; slot = cursor % NFX_RELEASE_SLOTS,
                              * release sequence number = cursor + 1 */
    __u32 pad;
};

/* ---- counters: one per-CPU array per program, verdicts first, then reasons --------------- */
enum nfx_stat {
    /* verdicts, indexed by XDP action (tc programs map TC_ACT_* onto the same slots) */
    NFX_V_ABORTED = 0,
    NFX_V_DROP = 1,
    NFX_V_PASS = 2,
    NFX_V_TX = 3,
    NFX_V_REDIRECT = 4,
    /* parse reasons */
    NFX_R_OK = 8,
    NFX_R_TRUNC_ETH,
    NFX_R_VLAN,
    NFX_R_ARP,
    NFX_R_IPV6,
    NFX_R_NON_IP,
    NFX_R_TRUNC_IP,
    NFX_R_BAD_VERSION,
    NFX_R_BAD_IHL,
    NFX_R_IP_OPTIONS,        /* counted, then processed: options are legal */
    NFX_R_FRAGMENT,
    NFX_R_TRUNC_L4,
    NFX_R_UNSUPP_PROTO,
    NFX_R_ICMP_NOT_ECHO,
    NFX_R_EMPTY_PAYLOAD,     /* counted, then processed */
    /* gate */
    NFX_R_GATE_DROP,
    NFX_R_GATE_OTHER,        /* an action this build does not implement yet: dropped */
    /* forwarding */
    NFX_R_NO_PORT,           /* ingress interface is neither side of the NF */
    NFX_R_REDIRECT_FAIL,
    /* NAT */
    NFX_R_NAT_NEW,
    NFX_R_NAT_NOT_INSIDE,
    NFX_R_NAT_NO_MAPPING,
    NFX_R_NAT_PORTS_EXHAUSTED,
    NFX_R_NAT_MAP_FULL,
    NFX_R_NAT_EXPIRED,       /* an idle mapping evicted by the datapath */
    /* IDS */
    NFX_R_IDS_SIG_MATCH,
    NFX_R_IDS_SCAN_ALERT,
    NFX_R_IDS_RING_FULL,
    NFX_R_IDS_MAP_FULL,
    /* switch */
    NFX_R_SW_HIT_EXACT,
    NFX_R_SW_HIT_WILD,
    NFX_R_SW_MISS,
    NFX_R_SW_CLONE_FAIL,
    NFX_R_SW_RING_FULL,
    /* sink / generator */
    NFX_R_SINK_FOREIGN,      /* not a generator packet */
    NFX_R_SINK_BAD_FLOW,
    NFX_R_GEN_SENT,
    NFX_R_SINK_RX,           /* generator packets of a known flow, counted by the sink */
    /* moves */
    NFX_R_BUFFERED,
    NFX_R_BUF_RING_FULL,
    NFX_R_TO_CTRL,
    NFX_R_REDIRECTED,
    NFX_R_FROM_PEER,
    NFX_R_RELEASED,
    NFX_R_INJECTED,
    NFX_R_RELEASE_BAD,       /* a release slot that was empty or malformed */
    NFX_R_OP_PRE_IBC,        /* op: a copy the other path also carries (see nfx_gate) */
    NFX_R_IBC,
    /* statelets (NFX_ACT_STATELET) */
    NFX_R_STATELET,          /* ring records written: one per mirrored packet that changed state */
    NFX_R_STATELET_RING_FULL,    /* a mirrored packet's record lost: the ring was full */
    NFX_R_STATELET_BYTES,    /* bytes of the records written (sum, not a count) */
    NFX_R_STATELET_PKT_BYTES,    /* bytes of the packets those records mirror (sum) */
    /* switch: armed rules */
    NFX_R_SW_FIRED,          /* triggers taken (and consumed) */
    NFX_R_SW_FIRE_FULL,      /* a trigger not recorded: the fired table was full */
    NFX_R_SW_ARMED,          /* a packet passed over an armed rule whose token has not fired */
    /* parse: IPv4 total length beyond the frame or below the header length (no state made) */
    NFX_R_BAD_TOT_LEN,
    /* NAT: ICMP errors (dest-unreachable, time-exceeded, parameter-problem) */
    NFX_R_NAT_ICMP_ERR,      /* translated for the mapping its quoted packet belongs to */
    NFX_R_NAT_ICMP_BAD,      /* quoted packet unreadable (short, fragment, other protocol): dropped */
    NFX_R_NAT_QUOTA,         /* a new flow of an inside host at its mapping quota: dropped */
    /* IDS: a packet it does not inspect (ARP, IPv6, fragment, non-echo ICMP, other protocol,
     * VLAN, other ethertype), passed or dropped by ids_cfg.drop_uninspected */
    NFX_R_IDS_UNINSPECTED,
    /* a reserved mark (TOS NFX_TOS_IBC / NFX_TOS_FIRE) from where or when nfx sends none: at an
     * NF an IBC of no running OP move; at a switch one from a host-facing port. Dropped. */
    NFX_R_FORGED,
    NFX_STAT_MAX = 96,
};

/* ---- NF wiring (array of 1, per instance) ------------------------------------------------ */
#define NFX_SIDE_IN  0   /* tx devmap slot toward the inside (h1) switch */
#define NFX_SIDE_OUT 1   /* tx devmap slot toward the outside (h2) switch */
#define NFX_TX_SLOTS 8   /* slots 2.. are peers for REDIRECT */

struct nfx_mac {             /* a struct, not __u8[2][6]: BCC 0.26 mis-sizes 2-D arrays */
    __u8 addr[6];
};

struct nfx_port_cfg {
    __u32 ifindex[2];        /* by side */
    struct nfx_mac mac[2];   /* our own MAC on each side */
    struct nfx_mac peer_mac[2];  /* next hop's MAC on each side */
    __u32 release_ifindex;   /* the veth the release path's live test runs name as ingress */
    __u32 peer_ifindex[NFX_TX_SLOTS];  /* by tx slot: the peer link to another instance */
};

/* ---- NAT ---------------------------------------------------------------------------------- */
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

#define NFX_TCP_FIN 0x01
#define NFX_TCP_SYN 0x02
#define NFX_TCP_RST 0x04
#define NFX_TCP_ACK 0x10

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

/* ---- IDS ---------------------------------------------------------------------------------- */
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

/* ---- statelets: the state updates of a mirrored packet ----------------------------------- */
/* A packet the gate marks NFX_ACT_STATELET writes one record into the nfx_statelets ringbuf, of
 * its real length: the statelets of every entry the packet created, changed or deleted, back to
 * back, in the order the datapath made the changes. A record is 8-byte words (little-endian):
 *     struct nfx_statelet   1 word
 *     key                   the entry's map key, zero-padded: 2 words for the flow-keyed tables
 *                           (nat_fwd, nat_rev, ids_flows), 1 for the others
 *     values                nval words: for each bit set in mask, lowest first, the field's NEW
 *                           absolute value; a flow-key field (NAT peer, port owner) takes 2 words,
 *                           any other field 1 (zero-extended)
 * Field bit i is the i-th field of the table's value struct, pad not counted (enum nfx_stf_*);
 * a value that is not a struct (nat_ports' owner key, ids_hostports' u8) is field 0.
 * NFX_ST_SET with every field set is what creation wrote; NFX_ST_DEL carries no values.
 * `inc` names the entry's incarnation in tables whose keys can come back after a deletion
 * (NAT: created_ns, IDS flows: first_ns, >> NFX_STATELET_INC_SHIFT), so a statelet of an earlier
 * connection never lands on a later one under the same key. Replay is exact and idempotent:
 * values are absolute; within an incarnation counters only grow and pkts orders the rest. */
#define NFX_STATELET_WORDS 128   /* most words one packet's record can hold */

enum nfx_st_table {
    NFX_ST_NAT_FWD = 1,
    NFX_ST_NAT_REV = 2,
    NFX_ST_NAT_PORTS = 3,
    NFX_ST_IDS_FLOWS = 4,
    NFX_ST_IDS_HOSTS = 5,
    NFX_ST_IDS_HOSTPORTS = 6,
};

enum nfx_st_op { NFX_ST_SET = 1, NFX_ST_DEL = 2 };

#define NFX_STATELET_INC_SHIFT 10  /* inc = (u32)(created_ns >> 10): ~1 us units, wraps in 73 min */

struct nfx_statelet {
    __u8  table;             /* enum nfx_st_table */
    __u8  op;                /* enum nfx_st_op */
    __u8  nval;              /* value words after the key */
    __u8  mask;              /* fields carried: bit i = field i of the table's value */
    __u32 inc;               /* the entry's incarnation (0 in tables without one) */
};

/* field bits (struct field order) */
enum nfx_stf_nat { NFX_STF_NAT_PEER = 0, NFX_STF_NAT_PKTS, NFX_STF_NAT_BYTES, NFX_STF_NAT_CREATED_NS,
                   NFX_STF_NAT_LAST_SEEN_NS, NFX_STF_NAT_TCP_FLAGS };
enum nfx_stf_ids_flow { NFX_STF_FLOW_PKTS = 0, NFX_STF_FLOW_BYTES, NFX_STF_FLOW_FIRST_NS, NFX_STF_FLOW_LAST_NS,
                        NFX_STF_FLOW_SIG_HITS, NFX_STF_FLOW_TCP_FLAGS };
enum nfx_stf_ids_host { NFX_STF_HOST_PKTS = 0, NFX_STF_HOST_BYTES, NFX_STF_HOST_FLOWS, NFX_STF_HOST_DPORTS,
                        NFX_STF_HOST_ALERTS, NFX_STF_HOST_SCAN_ALERTED };
#define NFX_STF_VALUE 0          /* the whole value of a table whose value is not a struct */

/* ---- switch ------------------------------------------------------------------------------- */
#define NFX_SW_MAX_PORTS 4      /* output ports per rule: the first is redirected, the rest cloned */
#define NFX_SW_MAX_WILD  16
#define NFX_SW_MAX_RULES 4096   /* rule ids index the rule and counter arrays */
#define NFX_SW_MAX_FIRED 1024   /* tokens fired and not yet forgotten (LRU: the oldest go first) */
#define NFX_SW_PORT_SLOTS 64    /* ports with a role (sw_ports) */
#define NFX_SW_PORT_HOST 1      /* faces a host: nfx's reserved marks are dropped there */
#define NFX_SW_PORT_NF   2      /* faces an NF instance: triggers are taken there */

#define NFX_SW_OUTPUT    0x01
#define NFX_SW_SET_TOS   0x02
#define NFX_SW_CLEAR_TOS 0x04
#define NFX_SW_TO_CTRL   0x08
#define NFX_SW_DROP      0x10

struct nfx_sw_rule {
    __u32 actions;
    __u32 nports;
    __u32 ports[NFX_SW_MAX_PORTS];   /* ifindexes in the switch's netns */
    __u8  tos;
    __u8  pad[3];
    __u32 used;
    __u64 token;                     /* nonzero: armed, in force only once sw_fired has it */
};

struct nfx_sw_wild {                 /* a wildcard match; 0 fields match anything */
    __u32 in_port;
    __u32 saddr;
    __u32 smask;
    __u32 daddr;
    __u32 dmask;
    __u16 sport;
    __u16 dport;
    __u8  proto;
    __u8  used;
    __u16 prio;                      /* user space keeps the slots sorted by it; unused here */
    __u32 rule;                      /* index into the rule array */
};

struct nfx_sw_cfg {                  /* array of 1, written by the controller */
    __u32 ibc_epoch;                 /* the epoch of the IBC the controller is sending (0: none) */
    __u32 pad;
};

struct nfx_sw_counter {
    __u64 pkts;
    __u64 bytes;
};

struct nfx_sw_ctrl_hdr {             /* ringbuf record: header then the packet bytes */
    __u32 len;
    __u32 in_port;
    __u32 rule;
    __u32 pad;
    __u64 ts_ns;
};

/* ---- generator and sink ------------------------------------------------------------------- */
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
    __u8  pad;
    __u32 tx_slot;
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

/* The sink's seen-bitmap: NFX_SINK_WORDS words per flow, word (seq / 64) % NFX_SINK_WORDS
 * of flow f at index f * NFX_SINK_WORDS + that. A word records one 64-seq block, named by
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
    __u32 pad;
};

/* latency histogram of rx_ns - tx_ns: values below NFX_LAT_SUB have their own bucket; above,
 * each power of two [2^e, 2^(e+1)) splits into NFX_LAT_SUB equal sub-buckets:
 * index = NFX_LAT_SUB * (e - 1) + ((v >> (e - 2)) & 3); 128 buckets reach 2^33 ns (8.6 s) */
#define NFX_LAT_SUB 4
#define NFX_LAT_BUCKETS 128

#endif /* NFX_H */
