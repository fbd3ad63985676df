"""Traffic on a testbed: the generator in h1 (attached to h1's spare veth, sending out eth0) and
the sink in h2 (in place of the XDP stub, which is put back afterwards). With echo, h2's sink
reflects every packet it counts and a second sink on h1's eth0 (in place of its stub, put back
too) counts the echoes: its latency is the round-trip time, on h1's clock alone."""
import contextlib
import os

from .. import registry
from ..testbed.builder import GEN_IF, HOST_IF
from ..errors import BadInput, NfxError
from ..loader import attach, netns
from .gen import Generator
from .loop import link as loop_link
from .report import measure
from .sink import Sink

DPORT = 9000


def gen_and_sink_hosts(rec) -> tuple[dict, dict]:
    hosts = {n: i for n, i in rec.get("nodes", {}).items() if i["role"] == "host"}
    src = [i for i in hosts.values() if "gen_if" in i]
    dst = [i for i in hosts.values() if "gen_if" not in i]
    if not src or not dst:
        raise NfxError(f"testbed {rec['name']} has no generator host and sink host")
    return src[0], dst[0]


@contextlib.contextmanager
def rig(name: str, flows: int, size: int | None = None, proto: str = "udp", src_ip: str | None = None,
        flows_per_addr: int = 0, echo: bool = False, cpus: int | None = None, pin_cpu: int | None = None,
        loop: bool = False):
    """Yields (generator, sink) wired into testbed `name`, or with echo (generator, sink,
    echo sink). The flows come from the sending host's address, or from `src_ip` on,
    `flows_per_addr` flows per address (0: all from one). `cpus`: sending threads, one per CPU
    (nfx.traffic.gen); default 1, and on a testbed with several queues a veth, one per CPU up to
    the queue count (one sender feeds one queue only). `pin_cpu`: the one sender pinned to that CPU.
    `loop`: the sink sends every packet back round a veth pair to the generator, which sends it
    again (nfx.traffic.loop): XDP-born traffic, flat out only; the pair goes with the rig."""
    rec = registry.load(name)
    if rec.get("status") != "up":
        raise NfxError(f"testbed {name} is {rec.get('status')}, not up")
    src, dst = gen_and_sink_hosts(rec)
    # the next hop's real MAC: switches ignore it, a kernel router (the baseline) needs it
    peer_mac = _peer_mac(rec, src)
    queues = rec.get("queues", 1)
    if cpus is None:
        cpus = 1 if pin_cpu is not None or loop else min(queues, len(os.sched_getaffinity(0)), flows)
    if loop and (echo or cpus != 1):
        raise BadInput("a traffic loop has one sender and no echo")
    gen = sink = back = None
    ends = contextlib.ExitStack()
    try:
        gen_if = loop_from = sink_end = None
        if loop:
            gen_if, sink_end = ends.enter_context(loop_link(src["ns"], dst["ns"]))
            loop_from = (dst["ns"], sink_end)
        # several queues: each flow still has one sending CPU, so one queue at every hop
        mq = queues > 1
        sink = Sink(dst["ns"], HOST_IF, flows, echo=echo, multi_queue=mq, loop_if=sink_end)
        if echo:
            back = Sink(src["ns"], HOST_IF, flows, multi_queue=mq)
        gen = Generator(src["ns"], gen_if or GEN_IF, HOST_IF, dst_mac=peer_mac, dst_ip=dst["addr"].split("/")[0],
                        src_ip=src_ip or src["addr"].split("/")[0], dport=DPORT, proto=proto, size=size,
                        nflows=flows, flows_per_addr=flows_per_addr, cpus=cpus, pin_cpu=pin_cpu,
                        loop_from=loop_from)
        yield (gen, sink, back) if echo else (gen, sink)
    finally:
        if gen:
            gen.close()
        for s, host in ((sink, dst), (back, src)):
            if s:
                s.close()
                attach.attach_xdp_pinned(host["ns"], HOST_IF, rec["stub"])
        ends.close()


def _peer_mac(rec, host: dict) -> bytes:
    for node, info in rec["nodes"].items():
        if info["ns"] == host["ns"]:
            [peer] = info["ifaces"]
            pinfo = rec["nodes"][peer]
            return netns.mac(pinfo["ifaces"][node], pinfo["ns"])
    raise NfxError("host not found in its testbed")


def run(name: str, flows: int, rate: float | None, duration: float, size: int | None = None,
        proto: str = "udp", progress=None, echo: bool = False) -> dict:
    with rig(name, flows, size, proto, echo=echo) as sides:
        gen, sink = sides[:2]
        r = measure(gen, sink, rate, duration, progress=progress, echo=sides[2] if echo else None)
    r.update(testbed=name, flows=flows, size=gen.size, proto=proto)
    return r
