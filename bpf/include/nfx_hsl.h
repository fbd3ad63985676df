/* nfx_hsl.h: SHarP's handover support layer on the wire. The controller and the instances talk
 * in band, through the switches (no control connection between them): START_HO (controller to
 * source and destination, a packet-out on the switch port in front of each), ACK and DONE
 * (instance to controller: the switch copies them to its controller ring), END (controller to
 * destination: its buffer is all sent) and TEST (the controller's test packet, injected on the
 * host side so it shares the flows' FIFO). Python mirror: nfx/layout/hsl.py. */
#ifndef NFX_HSL_H
#define NFX_HSL_H

#define NFX_TOS_HSL   0xf4
#define NFX_HSL_MAGIC 0x6e66686fu      /* "nfho", first payload word (network order) */
#define NFX_HSL_PORT  4792             /* UDP, both ends (TOS and magic decide) */
#define NFX_HSL_EPOCHS 64              /* handovers whose test packet a switch expects at once */

enum nfx_hsl_kind { NFX_HSL_START = 1, NFX_HSL_ACK = 2, NFX_HSL_END = 3, NFX_HSL_DONE = 4, NFX_HSL_TEST = 5 };

struct nfx_hsl_hdr {                   /* the UDP payload's start; a JSON body of `len` bytes follows */
    __u32 magic;                       /* network order */
    __u32 epoch;                       /* the handover (host order, like every epoch) */
    __u8  kind;
    __u8  side;                        /* the side of the instance it was sent to or from */
    __u16 len;
};

#endif /* NFX_HSL_H */
