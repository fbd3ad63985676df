/* nfx_statelet.h: the state updates of a mirrored packet. Python mirror: nfx/layout/statelet.py.
 *
 * A packet the gate marks NFX_ACT_STATELET writes one record into the nfx_statelets ringbuf, of
 * its real length: the statelets of every entry the packet created, changed or deleted, back to
 * back, in the order the datapath made the changes. A record is 8-byte words (little-endian):
 *     struct nfx_statelet   1 word
 *     key                   the entry's map key, zero-padded: 2 words for the flow-keyed tables
 *                           (nat_fwd, nat_rev, ids_flows), 1 for the others
 *     values                nval words: for each bit set in mask, lowest first, the field's NEW
 *                           absolute value; a flow-key field (NAT peer, port owner) takes 2 words,
 *                           any other field 1 (zero-extended)
 * Field bit i is the i-th field of the table's value struct, pad not counted (enum nfx_stf_*,
 * beside each NF's structs in nfx_nat.h and nfx_ids.h); a value that is not a struct
 * (nat_ports' owner key, ids_hostports' u8) is field 0.
 * NFX_ST_SET with every field set is what creation wrote (and what every SET of a shared
 * record carries: the packets between batch boundaries wrote none); NFX_ST_DEL carries no values.
 * `inc` names the entry's incarnation in tables whose keys can come back after a deletion
 * (NAT: created_ns, IDS flows: first_ns, >> NFX_STATELET_INC_SHIFT), so a statelet of an earlier
 * connection never lands on a later one under the same key. Replay is exact and idempotent:
 * values are absolute; within an incarnation counters only grow and pkts orders the rest.
 *
 * STAMP (NFX_ST_STAMP) names no map: it says which packet the record is. The record of every
 * packet mirrored while the gate shares state (nfx_gate_cfg.share: written at the flow's batch
 * boundaries and when an entry is made or ended, nfx_gate.h), and of every packet that
 * came stamped (struct nfx_stamp in nfx_flow.h), starts with one: op SET, nval 1, mask 1
 * (field 0), inc 0, key = the packet's flow key as the gate saw it (2 words), value = its stamp
 * (0: it came unstamped). Such a record is written even when the packet changed nothing.
 * Replay skips it. */
#ifndef NFX_STATELET_H
#define NFX_STATELET_H

#define NFX_STATELET_WORDS 128   /* most words one packet's record can hold */

enum nfx_st_table {
    NFX_ST_NAT_FWD = 1,
    NFX_ST_NAT_REV = 2,
    NFX_ST_NAT_PORTS = 3,
    NFX_ST_IDS_FLOWS = 4,
    NFX_ST_IDS_HOSTS = 5,
    NFX_ST_IDS_HOSTPORTS = 6,
    NFX_ST_STAMP = 7,        /* no map: the packet's flow key and stamp (above) */
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

#define NFX_STF_VALUE 0          /* the whole value of a table whose value is not a struct */

#endif /* NFX_STATELET_H */
