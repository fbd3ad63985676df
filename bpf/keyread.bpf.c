/* keyread.bpf.c: the entries of one hash table under a list of keys, read in the kernel in one
 * BPF_PROG_TEST_RUN (nfx/loader/keyread.py) instead of one syscall a key (2 us a key idle on this
 * VM, 6-8 us with the CPUs carrying traffic: a late-locked group's 320 keys took 2-3 ms of the
 * time its packets were held).
 *
 * A syscall program (BPF_PROG_TYPE_SYSCALL, sleepable): run by a test run on a context the
 * kernel copies in and back, with no packet. An XDP program run the same way (48 keys a run)
 * cost 4.6 us a key under traffic against this one's 1.2: its test run turns bottom halves off
 * and on, which likely lets pending network softirqs run on the caller's time. kr_table is a
 * placeholder the loader points at the table to read (loader/image.py swaps its fd); the
 * verifier checks every access against that table's own key and value sizes, which the build's
 * defines repeat as words (NFX_KR_WORD, the widest that divides both).
 *
 * The request (nfx_keyread.h) carries n keys; the program fills the values it finds, their found
 * bytes and head.found. One exit; its return value is 0 (the head says what happened). Plain
 * hash and LRU tables only: a per-CPU table's lookup here would read one CPU's slot, and an LRU
 * entry read here counts as used (the syscall's lookup does not). */
#include <uapi/linux/bpf.h>
#include "nfx_keyread.h"

#ifndef NFX_KR_WORD
#define NFX_KR_WORD __u64
#endif
#ifndef NFX_KR_KEY_WORDS
#define NFX_KR_KEY_WORDS 2
#endif
#ifndef NFX_KR_VALUE_WORDS
#define NFX_KR_VALUE_WORDS 1
#endif

struct nfx_kr_key { NFX_KR_WORD w[NFX_KR_KEY_WORDS]; };
struct nfx_kr_value { NFX_KR_WORD w[NFX_KR_VALUE_WORDS]; };

struct nfx_kr_req {
    struct nfx_kr_head head;
    struct nfx_kr_key keys[NFX_KR_MAX];
    struct nfx_kr_value values[NFX_KR_MAX];
    __u8 found[NFX_KR_MAX];
};

BPF_TABLE("hash", struct nfx_kr_key, struct nfx_kr_value, kr_table, 1);

int nfx_keyread(void *ctx)
{
    struct nfx_kr_req *r = ctx;
    __u32 n = r->head.n, found = 0;
    __u32 error = n > NFX_KR_MAX;
    if (error)
        n = 0;                           /* refused whole: nothing read */
    /* unrolled, so every access to the context has a constant offset; each key's step is
     * guarded rather than a break (an early exit on a runtime count defeats LLVM's unroller) */
#pragma unroll
    for (__u32 i = 0; i < NFX_KR_MAX; i++) {
        if (i < n) {
            struct nfx_kr_key k;         /* map helpers take keys from the stack, not the context */
#pragma unroll
            for (int w = 0; w < NFX_KR_KEY_WORDS; w++)
                k.w[w] = r->keys[i].w[w];
            struct nfx_kr_value *v = kr_table.lookup(&k);
            __u8 hit = 0;
            if (v) {
#pragma unroll
                for (int w = 0; w < NFX_KR_VALUE_WORDS; w++)
                    r->values[i].w[w] = v->w[w];
                hit = 1;
            }
            r->found[i] = hit;
            found += hit;
        }
    }
    r->head.found = found;
    r->head.error = error;
    return 0;
}
