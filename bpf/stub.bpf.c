/* XDP_PASS for interfaces that receive XDP_REDIRECTed frames from a veth peer: native veth
 * redirect needs a program on the receiving side, or the frames vanish (PLATFORM.md). */
#define NFX_NO_STATS_USE
#include "nfx_bpf.h"

int nfx_stub(struct xdp_md *ctx)
{
    return nfx_exit(XDP_PASS);
}
