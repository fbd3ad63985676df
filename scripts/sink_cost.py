"""What the sink costs per packet: generator flat out h1 -> h2 over one veth pair, the sink on
h2, with the kernel's per-program run-time statistics on (BPF_ENABLE_STATS, held only while this
runs). Prints, per repetition, sink ns/packet (in the program), rx pps and the sink's verdict.

    PYTHONPATH=<tree> python scripts/sink_cost.py [--flows 1000] [--duration 2] [--reps 3]

Run it against two trees (e.g. a `git archive` of the old commit) to compare: same machine,
same run, alternating. Namespaces are removed on exit."""
import argparse
import ctypes as ct
import json
import os
import secrets

from nfx.loader import bpfsys, netlink, netns
from nfx.traffic.gen import Generator
from nfx.traffic.report import measure
from nfx.traffic.sink import Sink

ENABLE_STATS, STATS_RUN_TIME = 32, 0
RUN_TIME_OFF = 88          # run_time_ns, then run_cnt, in bpf_prog_info after netns_ino


def enable_stats() -> int:
    attr = (ct.c_uint32 * 2)(STATS_RUN_TIME, 0)
    return bpfsys._call(ENABLE_STATS, attr)


def run_stats(fd: int) -> tuple[int, int]:
    info, _ = bpfsys.prog_info(fd)
    t, n = (ct.c_uint64 * 2).from_buffer_copy(bytes(info._rest)[RUN_TIME_OFF:RUN_TIME_OFF + 16])
    return t, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.0, help="pps; 0 = flat out")
    a = ap.parse_args()
    sfx = secrets.token_hex(3)
    h1, h2 = f"skc{sfx}a", f"skc{sfx}b"
    made, sfd = [], None
    try:
        for n in (h1, h2):
            made.append(n)
            netns.add(n)
        with netlink.Netlink(h1) as n1, netlink.Netlink(h2) as n2:
            n1.veth("tx0", "rx0", n2)
            n1.veth("ga0", "ga1")
        sfd = enable_stats()
        with Sink(h2, "rx0", a.flows) as s, \
                Generator(h1, "ga0", "tx0", dst_mac=netns.mac("rx0", h2), dst_ip="10.77.0.2",
                          src_ip="10.77.0.10", nflows=a.flows) as g:
            for i in range(a.reps):
                t0, n0 = run_stats(s.fn.fd)
                r = measure(g, s, a.rate or None, a.duration, settle_s=1.0)
                t1, n1 = run_stats(s.fn.fd)
                keep = ("sent", "received", "lost", "duplicated", "reordered", "unexpected",
                        "out_of_window", "clean", "window")
                out = {k: r[k] for k in keep if k in r}
                out.update(rep=i, sink_ns_per_pkt=round((t1 - t0) / max(n1 - n0, 1), 1),
                           rx_mpps=round(r["received"] / r["elapsed_s"] / 1e6, 3))
                print(json.dumps(out), flush=True)
    finally:
        if sfd is not None:
            os.close(sfd)
        for n in made:
            netns.delete(n)


if __name__ == "__main__":
    main()
