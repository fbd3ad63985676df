/* nfx_clock.h: the time an NF stamps state with: CLOCK_MONOTONIC at the kernel tick's
 * granularity (bpf_ktime_get_coarse_ns's value), read from the clock once a tick per CPU.
 * A clock helper is dear here (KVM's pvclock and the call: measured 24 ns a packet for the
 * coarse clock, 49 for the fine one, against 10 for a jiffies read and a per-CPU slot).
 * Idle timeouts, first and last seen and alert times are seconds; the coarse clock can lag the
 * fine one by a tick, so readers compare with CLOCK_MONOTONIC_COARSE. Not state: a fresh
 * cache per program (BPF_PERCPU_ARRAY, never taken over by an upgrade). */
#ifndef NFX_CLOCK_H
#define NFX_CLOCK_H

struct nfx_tick {
    __u64 jiffies;           /* the tick the cached time was read in */
    __u64 ns;                /* bpf_ktime_get_coarse_ns() then */
};

BPF_PERCPU_ARRAY(nfx_tick, struct nfx_tick, 1);

static __always_inline __u64 nfx_now(void)
{
    __u32 z = 0;
    struct nfx_tick *t = nfx_tick.lookup(&z);
    __u64 j = bpf_jiffies64();
    if (!t)
        return bpf_ktime_get_coarse_ns();
    if (t->jiffies != j) {
        t->jiffies = j;
        t->ns = bpf_ktime_get_coarse_ns();
    }
    return t->ns;
}

#endif /* NFX_CLOCK_H */
