/* nfx_flow.h: what every nfx program shares: the flow key, the verdict/reason counters, and an
 * NF instance's wiring. Python mirror: nfx/layout/flow.py. Multi-byte address/port fields are in
 * network byte order, as on the wire. Each header's text is part of the layout hash of every
 * program that includes it (nfx/layout/hashing.py): change a struct, change the mirror. */
#ifndef NFX_FLOW_H
#define NFX_FLOW_H

#define NFX_LAYOUT_VERSION 2

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

/* TCP flags as the parser and the NFs keep them */
#define NFX_TCP_FIN 0x01
#define NFX_TCP_SYN 0x02
#define NFX_TCP_RST 0x04
#define NFX_TCP_ACK 0x10

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
    NFX_R_STATELET_RING_FULL,    /* a mirrored packet's record lost: the ring would not take it */
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
    /* SHarP: a handover message (TOS NFX_TOS_HSL) passed to the stack, where the agent reads it */
    NFX_R_HSL,
    /* dup: the switch's tagged copies that arrived (source's, destination's), the destination's
     * copies processed in shadow (state changed, output dropped), and their bytes (a sum) */
    NFX_R_DUP_COPY_SRC,
    NFX_R_DUP_COPY_DST,
    NFX_R_SHADOW,
    NFX_R_SHADOW_BYTES,
    /* statelets: a mirrored packet's record lost because its statelets did not fit one record
     * (NFX_STATELET_WORDS), told apart from a ring that would not take it */
    NFX_R_STATELET_TOO_BIG,
    /* the hold FIFO (nfx_hold.h): a packet held in the buffer ring instead, because the FIFO had
     * filled in this move (then the rest of the move's do too); the release path reached a slot
     * reserved but not yet written (it runs again) */
    NFX_R_HOLD_SPILLED,
    NFX_R_RELEASE_WAIT,
    /* the release path found a held packet of an earlier move (its agent died mid-move): dropped,
     * as the agent drops an earlier move's buffer-ring records */
    NFX_R_HOLD_STALE,
    /* the stamper (struct nfx_stamp below; nfx_stamp.h): a frame that arrived at an NF with a
     * trailer, which came off before anything read the packet; one the gate kept or passed on
     * (buffered, held, to the controller, to a peer) with its trailer put back; one whose
     * trailer could not be put back (it goes on unstamped); one whose trailer could not come
     * off (dropped: no frame leaves an NF with one) */
    NFX_R_STAMPED,
    NFX_R_STAMP_KEPT,
    NFX_R_STAMP_LOST,
    NFX_R_STAMP_TRIM_FAIL,
    /* a PROCESS packet mirrored because the gate shares its state (nfx_gate_cfg.share); those
     * of them that wrote no record are r_share_quiet too */
    NFX_R_SHARED,
    /* sink: a generator packet in a frame longer than its IPv4 datagram (a trailer that leaked,
     * or padding), one whose payload is not the generator's (pad word or tail not zero) */
    NFX_R_SINK_BAD_LEN,
    NFX_R_SINK_BAD_PAYLOAD,
    /* a packet processed while the gate shares state that wrote no record: not at its flow's
     * batch boundary (nfx_gate_cfg.share_batch) and it made or ended no entry */
    NFX_R_SHARE_QUIET,
    /* an NF's runs begun (nfx_nf_entry); its verdicts count the runs ended (its one exit): an
     * agent that changed a mark waits for every run begun before it to end (nfx/agent/settle.py) */
    NFX_R_NF_RUN,
    /* generator, tc transport: a packet bpf_clone_redirect could not send (its flow's sequence
     * number is given back, so the sink never waits for it) */
    NFX_R_GEN_TX_FAIL,
    NFX_STAT_MAX = 96,
};

/* ---- the stamper's trailer ----------------------------------------------------------------
 * With the switch's stamper on (nfx_sw_cfg.stamp), a flow packet that arrives on a host port
 * and goes to NF ports leaves the switch with these 8 bytes appended right after its IPv4
 * datagram (the total length unchanged, Ethernet padding dropped): the flow's packet count
 * there, 1 for its first packet, per direction (the switch counts by 5-tuple). Both words in
 * network order. An NF takes it off before its logic runs (nfx_stamp.h). */
#define NFX_STAMP_MAGIC 0x6e667873u   /* "nfxs" */
#define NFX_STAMP_LEN   8

struct nfx_stamp {
    __u32 magic;             /* NFX_STAMP_MAGIC */
    __u32 count;             /* the flow's packets through the switch so far, this one included */
};

/* ---- NF wiring (array of 1, per instance) ------------------------------------------------ */
#define NFX_SIDE_IN  0   /* tx devmap slot toward the inside (h1) switch */
#define NFX_SIDE_OUT 1   /* tx devmap slot toward the outside (h2) switch */
#define NFX_TX_SLOTS 16  /* slots 2.. are peers for REDIRECT: 14 peers, a cluster testbed's 12 and two more */

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

#endif /* NFX_FLOW_H */
