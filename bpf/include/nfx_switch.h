/* nfx_switch.h: the SDN switch's rules, wildcard matches, counters, config and controller
 * records. Python mirror: nfx/layout/switch.py. */
#ifndef NFX_SWITCH_H
#define NFX_SWITCH_H

#define NFX_SW_MAX_PORTS 4      /* output ports per rule: the first is redirected, the rest cloned */
#define NFX_SW_MAX_WILD  16
#define NFX_SW_MAX_RULES 4096   /* rule ids index the rule and counter arrays */
#define NFX_SW_MAX_FIRED 1024   /* tokens fired and not yet forgotten (LRU: the oldest go first) */
#define NFX_SW_PORT_SLOTS 64    /* ports with a role (sw_ports) */
#define NFX_SW_PORT_HOST 1      /* faces a host: nfx's reserved marks are dropped there */
#define NFX_SW_PORT_NF   2      /* faces an NF instance: triggers are taken there */
#define NFX_SW_PORT_TRUNK 4     /* with NF: the tunnel to a joined site's same switch (nfx testbed
                                 * join), which sends what its NFs sent and the dup copies this
                                 * switch tagged: tagged frames are taken there */
#define NFX_SW_MAX_STAMPS 65536 /* flows (per direction) the stamper counts; LRU: the idlest go */

#define NFX_SW_OUTPUT    0x01
#define NFX_SW_SET_TOS   0x02
#define NFX_SW_CLEAR_TOS 0x04
#define NFX_SW_TO_CTRL   0x08
#define NFX_SW_DROP      0x10
#define NFX_SW_TAG       0x20   /* dup: each port's copy gets its tag MAC (nfx_move.h) */
#define NFX_SW_SPREAD    0x40   /* output: the packet itself goes to a port of the rule's spread
                                 * group (sw_spread), chosen per flow, not to ports[0]; ports[1..]
                                 * still get clones */

/* spread groups: one per spread rule, by rule id */
#define NFX_SW_SPREAD_PORTS 16  /* ports a group chooses among */
#define NFX_SW_SPREAD_HASH  0   /* by a hash of the 5-tuple that both directions of a flow share */
#define NFX_SW_SPREAD_SLICE 1   /* by the destination port's slice of [lo, lo + span): port lo + o
                                 * goes to ports[((o + 1) * nports - 1) / span], the instance whose
                                 * NAT share of the range holds it (nfx/testbed/builder.py
                                 * instance_config); a port outside the range is hashed */

/* the `rule` of a controller-ring record that holds an HSL message (nfx_hsl.h), not a packet
 * a rule sent: rule ids stop below NFX_SW_MAX_RULES, so no rule has it */
#define NFX_SW_RULE_HSL  4096

/* the switch's own reasons, counted in sw_reasons beside nfx_stats: kept out of enum nfx_stat
 * so the NFs' layout hash (and the state files it guards) stays as it is */
enum nfx_sw_reason {
    NFX_SW_R_HSL,                    /* an HSL message from an NF port, copied to the controller */
    NFX_SW_R_HSL_TEST,               /* the controller's test packet (expected epoch), taken */
    NFX_SW_R_HSL_FORGED,             /* an HSL mark from a host port that is no expected test */
    /* the stamper (nfx_sw_cfg.stamp), on packets from a host port to NF ports only: stamped;
     * could not be (the skb would not grow, or the trailer not be written); not stamped as no
     * flow packet (not parsed, a reserved mark, a datagram longer than the frame, GSO); not
     * stamped as the trailer would not fit an output port's MTU (sent on unstamped) */
    NFX_SW_R_STAMPED,
    NFX_SW_R_STAMP_FAIL,
    NFX_SW_R_STAMP_SKIPPED,
    NFX_SW_R_STAMP_TOO_BIG,
    NFX_SW_R_SPREAD_NO_SLICE,        /* a slice-spread packet whose port is outside the range: hashed */
    NFX_SW_R_IBC,                    /* the controller's IBC, sent on by its rule: the controller
                                      * changes that rule only once this count has moved
                                      * (nfx/control/steer.py ibc) */
    NFX_SW_R_MAX = 16,
};

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

struct nfx_sw_spread {               /* by rule id: where a spread rule's packets may go */
    __u32 mode;                      /* NFX_SW_SPREAD_* */
    __u32 nports;                    /* 1..NFX_SW_SPREAD_PORTS */
    __u32 ports[NFX_SW_SPREAD_PORTS];    /* ifindexes; every instance's index is the same at both switches */
    __u32 lo;                        /* slice: the range's first port (host order) */
    __u32 span;                      /* slice: its number of ports */
};

struct nfx_sw_cfg {                  /* array of 1, written by the controller */
    __u32 ibc_epoch;                 /* the epoch of the IBC the controller is sending (0: none) */
    __u32 stamp;                     /* nonzero: the stamper is on (struct nfx_stamp, nfx_flow.h) */
};

struct nfx_sw_counter {
    __u64 pkts;
    __u64 bytes;
    __u64 last_ns;                   /* bpf_ktime_get_ns of the last hit on this CPU (0: none) */
};

struct nfx_sw_ctrl_hdr {             /* ringbuf record: header then the packet bytes */
    __u32 len;
    __u32 in_port;
    __u32 rule;
    __u32 pad;
    __u64 ts_ns;
};

#endif /* NFX_SWITCH_H */
