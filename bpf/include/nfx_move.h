/* nfx_move.h: moves: in-band control and trigger frames, the buffer ring's records, the release
 * path and the hold FIFO's slots, and an instance's move config and state. Python mirror:
 * nfx/layout/move.py. */
#ifndef NFX_MOVE_H
#define NFX_MOVE_H

#include "nfx_flow.h"

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
#ifndef NFX_HOLD_SLOTS
#define NFX_HOLD_SLOTS    16384        /* the hold FIFO (nfx_hold.h), a power of two: 24 MiB */
#endif

/* how a packet reached the NF */
#define NFX_RX_PEER     1   /* over a peer link: redirected by another instance */
#define NFX_RX_RELEASED 2   /* released from this instance's own buffer */
#define NFX_RX_INJECTED 4   /* handed in by the agent (the controller's buffer): processed as is */
#define NFX_RX_DUP_SRC  8   /* dup: a switch's copy tagged for the move's source */
#define NFX_RX_DUP_DST  16  /* dup: a switch's copy tagged for the move's destination (shadow) */

/* dup: a rule that duplicates with tags (NFX_SW_TAG) gives the copy to its i-th port the
 * Ethernet source MAC 02:6e:66:64:75:<i+1> ("nfdu"); the NF rewrites MACs when it forwards, so
 * hosts never see one. Its first port is the source, its second the destination. */
#define NFX_DUP_TAG_HI  0x026e6664u    /* the tag's first four bytes, in network order */
#define NFX_DUP_TAG_B4  0x75
#define NFX_DUP_TAG_SRC 1              /* the tag's last byte on the source's copy */
#define NFX_DUP_TAG_DST 2              /* ... on the destination's copy */
/* nfx_move_cfg.dup */
#define NFX_DUP_SOURCE  1              /* this source's IBC of the move's epoch counts (the cut) */
#define NFX_DUP_SHADOW  2              /* destination: tagged copies change state, output nothing */
#define NFX_DUP_HOLD_OWN 4             /* destination (op): its own (untagged) packets wait until the
                                        * source's last output has left */

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

/* one packet for the release path: the agent fills release slots, the gate fills hold slots
 * (nfx_hold.h); a live test run replays them */
struct nfx_release_slot {
    __u32 len;
    __u8  side;
    __u8  rx;                /* NFX_RX_RELEASED or NFX_RX_INJECTED (hold slots: RELEASED, and
                              * NFX_RX_DUP_DST for a dup copy) */
    __u16 pad;
    __u32 seq;               /* hold slots: the reservation's number + 1, written last (committed) */
    __u32 epoch;             /* hold slots: the move that held it */
    __u64 ts_ns;             /* hold slots: when the gate held it */
    __u8  data[NFX_MAX_PKT];
};

/* the hold FIFO's positions (array of 1): written by the program only */
struct nfx_hold_state {
    struct bpf_spin_lock lock;   /* reservations: any CPU may hold a packet */
    __u32 head;              /* slots reserved so far (slot = head % NFX_HOLD_SLOTS) */
    __u32 cursor;            /* slots the release path has taken (it alone writes it) */
    __u32 peak;              /* most slots in use at once, in this epoch */
    __u32 epoch;             /* the move epoch peak, untagged and max_wait_ns are for */
    __u32 untagged;          /* held in this epoch and not a dup copy for this instance (a dup op
                              * destination's own packets, held after the repoint) */
    __u32 spilled;           /* this epoch's packets that went to the buffer ring once the FIFO was
                              * full (from then on every one of them does, so order holds) */
    __u32 pad;
    __u64 max_wait_ns;       /* the longest a released packet of this epoch was held */
};

/* the move an instance takes part in (array of 1): written by its agent only */
struct nfx_move_cfg {
    __u32 epoch;             /* marks set for this move carry it (0: no move) */
    __u32 drain_epoch;       /* marks of this epoch may flip to PROCESS once fully released */
    __u32 flushed_seq;       /* every released packet up to this release sequence number has left */
    __u32 op;                /* order-preserving: switch-path packets before the switch's IBC drop */
    __u32 peer_cut;          /* the source's cut is in, on both sides (opennf: at the controller) */
    __u32 dup;               /* dup's role: NFX_DUP_SOURCE, NFX_DUP_SHADOW (0: no dup move) */
    __u32 hold;              /* held packets wait in the gate's hold FIFO (nfx_hold.h), not in the
                              * agent; the release path replays from it */
};

/* what the program records during a move (array of 1): written by the program only, so the
 * agent never clobbers it; the agent zeroes it between moves */
struct nfx_move_state {
    __u32 ibc_switch[2];     /* by side: the IBC arrived from the switch */
    __u32 ibc_peer[2];       /* by side: the IBC arrived from the source instance */
    __u32 release_cursor;    /* release slots consumed so far; slot = cursor % NFX_RELEASE_SLOTS */
    __u32 release_seq;       /* packets released so far, from either source: a released packet's
                              * sequence number (compared with flushed_seq) */
};

#endif /* NFX_MOVE_H */
