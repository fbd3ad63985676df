"""A traffic loop: XDP-born traffic on a kernel that refuses live-frame test runs.

The tc transport (nfx/loader/transmit.py) makes every packet an skb, which costs the sending
CPU about 1 us: flat out, that is most of what a bench on one CPU measures. In a loop, a fixed
set of frames goes round instead. The sink's loop build (bpf/sink.bpf.c, NFX_SINK_LOOP)
counts each generator packet and redirects it out of its end of a veth pair from the sink's
host to the generator's. The generator's `nfx_gen`, attached to the other end, makes the
frame its next packet (header, flow, sequence number) and sends it into the path again. Neither
reads a clock (NFX_GEN_UNTIMED, and the sink's loop build keeps no latency): a loop's latency
is only its frames over its rate. Frames are redirected from XDP to XDP at every XDP hop, as with live frames. The path
under test still gets them exactly as from the live transport, and the sink judges each one.

A few frames start the loop: a tc program sends each out of the sink's end, so the
generator's program receives them (the same kick the release path uses). Every redirect and
every NAPI it schedules stays on the CPU that sent the seeds, so one seeding thread pinned to
a CPU puts the whole loop on that CPU, generator, path and sink alike. The loop stops when the
generator's config says no flows: `nfx_gen` then drops what comes round (XDP_ABORTED, counted)
and the frames still on the way reach the sink.

SEED_FRAMES stays below a veth ring's 256 slots, so no ring can overflow even if every frame
in the loop sits in it at once: a loop loses nothing unless the path does."""
import contextlib
import os

from ..loader import bpfsys, netns, netlink, transmit

GEN_END, SINK_END = "lp0", "lp1"      # the pair's ends: in the generator's netns, in the sink's
SEED_FRAMES = 128                     # frames in the loop
VETH_RING = 256                       # a veth rx ring's slots (the kernel's VETH_RING_SIZE)


@contextlib.contextmanager
def link(gen_ns: str, sink_ns: str):
    """The loop's veth pair (GEN_END in gen_ns, SINK_END in sink_ns), removed on the way out."""
    with netlink.Netlink(gen_ns) as here, netlink.Netlink(sink_ns) as there:
        try:
            here.veth(GEN_END, SINK_END, peer_at=there)
            yield GEN_END, SINK_END
        finally:
            here.delete(GEN_END, missing_ok=True)      # takes its peer with it; also a pair made half way


def seed(sink_ns: str, sink_end: str, frame_len: int, count: int = SEED_FRAMES, cpu: int | None = None) -> None:
    """Send `count` empty frames of `frame_len` out of `sink_end` (in sink_ns), so its peer's
    XDP program receives them, this thread on `cpu` while it does (None: wherever it runs)."""
    if not 1 <= count < VETH_RING:
        raise ValueError(f"a loop holds 1..{VETH_RING - 1} frames, not {count}")
    was = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})          # this thread only; it runs there once this returns
    try:
        with netns.enter(sink_ns):
            fd = transmit.kick_program(netns.ifindex(sink_end))
            try:
                bpfsys.prog_test_run_skb(fd, bytes(frame_len), repeat=count)
            finally:
                os.close(fd)
    finally:
        if cpu is not None:
            os.sched_setaffinity(0, was)
