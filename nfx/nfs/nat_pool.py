"""The NAT's paired pooling in Python: which public address an inside host leaves by, as
nat_alloc (bpf/nat.bpf.c) computes it. Benches use it to plan and to synthesise NAT state."""
import numpy as np


def pool_hash(h):
    """nat_alloc's hash of an inside address (host order), in u32 arithmetic; the public
    address is pool_base + pool_hash(h) % pool_count. h: an int or an array of them."""
    x = np.asarray(h).astype(np.uint64)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x45D9F3B)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return x if isinstance(h, np.ndarray) else int(x)
