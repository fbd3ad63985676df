/* nfx_keyread.h: a keyed read's request (bpf/keyread.bpf.c), the context a test run hands the
 * program and copies back: struct nfx_kr_head, then room for NFX_KR_MAX keys, their values and
 * their found bytes, each array back to back at a fixed place (the program reaches them by
 * constant offsets: a syscall program may not index its context). Python mirror:
 * nfx/layout/keyread.py. */
#ifndef NFX_KEYREAD_H
#define NFX_KEYREAD_H

#define NFX_KR_MAX 256           /* keys a request may carry: a late-locked group's table in one */

struct nfx_kr_head {
    __u32 n;                     /* keys in the request */
    __u32 found;                 /* out: how many were found */
    __u32 error;                 /* out: 1 = more than NFX_KR_MAX keys (nothing read) */
    __u32 pad;
};

#endif /* NFX_KEYREAD_H */
