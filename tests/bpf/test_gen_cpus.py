"""Per-CPU senders in nfx_gen (cfg.cpus > 1): a call on CPU c sends only block c % cpus of the
flows, in rotation, with valid frames; so each flow has one sending CPU. And the Generator's
checks on its `cpus`."""
import os
import threading
import time

import pytest

from nfx import layout as L
from nfx.errors import BadInput
from nfx.loader import transmit
from nfx.loader.bpfsys import prog_test_run
from nfx.traffic.gen import Generator

from .test_gen import MAC1, MAC2, REDIRECT, check_frame

pytestmark = pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1")


def make(nflows: int, cpus: int) -> Generator:
    g = Generator(None, None, None, src_mac=MAC1, dst_mac=MAC2, src_ip="10.1.0.10", dst_ip="10.2.0.1",
                  dport=7000, nflows=nflows, sport_base=2000, flows_per_addr=3, cpus=cpus,
                  transport="live")
    g.maps["gen_tx"].put(L.u32(0), L.u32(1))
    return g


def runs_on(cpu: int, g: Generator, n: int) -> list[int]:
    """The flows of n plain test runs made from a thread pinned to `cpu` (frames checked)."""
    flows, errors = [], []

    def body():
        try:
            os.sched_setaffinity(0, {cpu})
            for _ in range(n):
                t0 = time.monotonic_ns()
                verdict, out, _ = prog_test_run(g.fn.fd, g.frame)
                t1 = time.monotonic_ns()
                assert verdict == REDIRECT
                flow = L.GenPayload.from_buffer_copy(out[42:66]).flow
                seq = L.GenPayload.from_buffer_copy(out[42:66]).seq
                check_frame(out, "udp", g.size, flow, seq, t0, t1)
                flows.append(flow)
        except BaseException as e:          # noqa: BLE001 -- reported by the caller
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return flows


def test_each_cpu_sends_its_own_block_of_flows():
    g = make(nflows=7, cpus=2)
    try:
        assert runs_on(0, g, 6) == [0, 1, 2, 0, 1, 2]            # block 0: 7 * 0 // 2 .. 7 * 1 // 2
        assert runs_on(1, g, 8) == [3, 4, 5, 6, 3, 4, 5, 6]      # block 1: 3 .. 6
        assert runs_on(0, g, 1) == [0]                           # CPU 0's rotation went on where it was
        assert g.per_flow_total() == [3, 2, 2, 2, 2, 2, 2]
        g.reset()
        assert runs_on(1, g, 1) == [3] and g.per_flow_total() == [0, 0, 0, 1, 0, 0, 0]
    finally:
        g.close()


def test_one_cpu_keeps_the_global_rotation():
    g = make(nflows=4, cpus=1)
    try:
        assert runs_on(1, g, 2) + runs_on(0, g, 3) == [0, 1, 2, 3, 0]
    finally:
        g.close()


@pytest.mark.parametrize("cpus,nflows", [(0, 4), (3, 2), (65, 100), (len(os.sched_getaffinity(0)) + 1, 100)])
def test_bad_cpus(cpus, nflows):
    with pytest.raises(BadInput, match="cpus"):
        make(nflows, cpus)


@pytest.mark.parametrize("cpus,pin", [(2, 1), (1, max(os.sched_getaffinity(0)) + 1), (1, -1)])
def test_bad_pin_cpu(cpus, pin):
    with pytest.raises(BadInput, match="pin_cpu"):
        Generator(None, None, None, src_mac=MAC1, dst_mac=MAC2, src_ip="10.1.0.10", dst_ip="10.2.0.1",
                  nflows=4, cpus=cpus, pin_cpu=pin)


@pytest.mark.parametrize("transport", [
    pytest.param("live", marks=pytest.mark.skipif(not transmit.live_frames_allowed(),
                                                  reason="this kernel refuses live frames (nfx/loader/transmit.py)")),
    "tc"])
@pytest.mark.parametrize("cpu", [0, 1])
def test_pinned_sender_sends_from_its_cpu_only(cpu, transport):
    """Frames from a generator pinned to `cpu`, in either transport: its per-CPU counter of frames
    sent grows on that CPU and no other (the calling thread's own affinity is left as it was)."""
    from tests.scratch import Scratch
    s = Scratch("tgp")
    g = None
    mine = os.sched_getaffinity(0)
    try:
        ns = s.ns("n")
        s.veth("ga0", ns, "ga1", ns)
        s.veth("tx0", ns, "rx0", ns)
        g = Generator(ns, "ga0", "tx0", dst_mac=MAC2, src_ip="10.1.0.10", dst_ip="10.2.0.1", nflows=4, pin_cpu=cpu,
                      transport=transport)
        r = g.run(None, 0.2)
        per_cpu = list(g.maps.nfx_stats.get(L.u32(L.Stat.R_GEN_SENT)))
        assert r["pin_cpu"] == cpu and r["sent"] > 0
        assert per_cpu[cpu] == r["sent"] and sum(per_cpu) == r["sent"], per_cpu
        assert os.sched_getaffinity(0) == mine
    finally:
        if g is not None:
            g.close()
        s.close()
