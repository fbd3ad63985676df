"""Traffic generator: bpf/gen.bpf.c driven by BPF_PROG_TEST_RUN, in the transport the kernel
allows (nfx/loader/transmit.py): live frames (nfx_gen), or an skb test run whose program sends a
clone of every packet out of `tx_if` (nfx_gen_tc: about 1 Mpps a CPU into a veth here, the skb
and its copy costing what live frames save; nothing is attached then).

Live frames: the program stays attached to `attach_if` (an interface that receives nothing) because a live
call on an unattached program pays ~24 ms of dispatcher rebuild; attached, 256 frames cost
~0.24 ms. Frames leave through devmap slot 0, `tx_if`. Rate control: every ~1 ms tick, send
what is owed since the start in one call (capped), so the long-run rate is exact and a slow
tick is caught up in the next one.

Per-CPU senders (cpus > 1): one thread pinned to each CPU 0..cpus-1 runs that loop at
rate / cpus, and the program gives the call on CPU c its own block of the flows
(bpf/gen.bpf.c). A frame redirected into a veth lands in rx queue (sending CPU % queues) and
is processed by that queue's NAPI on the sending CPU, so this is what feeds several queues of
a multi-queue testbed, each flow through one queue at every hop.

One sender pinned (pin_cpu): the one sending thread runs on that CPU alone. The redirects, and
the receivers' NAPI they schedule, run on the sending CPU, so a path measured flat out this way
costs that CPU's time per packet: generator, NF and sink on one CPU, the others left out.

A loop (loop_from; nfx/traffic/loop.py): `nfx_gen` stays attached to the loop's end and makes
every frame the sink sends round its next packet. It runs flat out only; the frames are
XDP-born whatever the kernel allows test runs to do."""
import ctypes as ct
import errno
import ipaddress
import os
import threading
import time

from .. import layout as L
from ..closing import Closing
from ..errors import BadInput, BpfError
from ..loader import attach, bpfsys, netns, transmit
from ..loader.compile import compile_source, load, size_class
from ..loader.maps import stats_dict
from ..loader.spec import MapSet, MapSpec
from . import loop

PROTOS = {"udp": 17, "tcp": 6}
HDR_LEN = {17: 14 + 20 + 8, 6: 14 + 20 + 20}
PAYLOAD_LEN = ct.sizeof(L.GenPayload)
TMPL_LEN = ct.sizeof(L.GenTmpl)
MAX_SIZE = 3000                  # one live-frames page holds the frame plus headroom

# After every batch the kernel flushes the redirects and runs the receiver's softirq, so the
# 256-slot veth ring holds at most one batch. Measured h1->h2 (1000 flows, 66 B, 1 s): batch
# 16-128 lost nothing at 2 Mpps or flat out (3.8-4.3 Mpps); batch 256 lost 0.2-0.3% at 2 Mpps.
# Every packet waits for its batch to be generated (~120 ns each), so the measured latency
# floor grows with the batch: p50 1.9 us at 16, 3.8 us at 32, 7.7 us at 64, 31 us at 256.
DEFAULT_BATCH = 32
DEFAULT_MAX_BURST = 4096         # frames per call: about one 1 ms tick at full speed
REFUSED_S = 1.0                  # tc: an interface that takes nothing this long is an error


def gen_defines(nflows: int, timed: bool = True) -> dict:
    """The generator's build: gen_seq is a capacity (the flow count is in gen_cfg). Not timed
    (a loop's): tx_ns stays 0."""
    return {"NFX_GEN_FLOWS": size_class(nflows), **({} if timed else {"NFX_GEN_UNTIMED": 1})}


def min_size(proto: str | int = "udp") -> int:
    p = PROTOS.get(proto, proto)
    return HDR_LEN[p] + PAYLOAD_LEN


def build_frame(src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str, dport: int, proto: int,
                size: int, sport: int, flow: int = 0, seq: int = 0, tx_ns: int = 0,
                payload: bytes | None = None) -> bytes:
    """One generator packet with valid checksums (scapy computes them). With flow/seq/tx_ns 0 it
    is the template the program patches; tests also use it to craft sink input."""
    from scapy.all import IP, TCP, UDP, Ether, Raw, raw
    if payload is None:
        payload = bytes(L.GenPayload(magic=L.GEN_MAGIC, flow=flow, seq=seq, tx_ns=tx_ns))
    pad = size - HDR_LEN[proto] - len(payload)
    if pad < 0:
        raise BadInput(f"frame size {size} is below the minimum {HDR_LEN[proto] + len(payload)}")
    l4 = (UDP(sport=sport, dport=dport) if proto == 17 else
          TCP(sport=sport, dport=dport, flags="PA", seq=1, ack=1, window=65535))
    pkt = (Ether(src=_mac_str(src_mac), dst=_mac_str(dst_mac)) /
           IP(src=src_ip, dst=dst_ip, ttl=64, flags="DF", id=0) / l4 / Raw(payload + bytes(pad)))
    return raw(pkt)


def _mac_str(m: bytes | str) -> str:
    return m if isinstance(m, str) else ":".join(f"{b:02x}" for b in m)


class GEN_MAPS(MapSet):
    """The generator program's maps (bpf/gen.bpf.c)."""
    gen_cfg = MapSpec(L.u32, L.GenCfg)
    gen_tmpl = MapSpec(L.u32, L.GenTmpl)
    gen_ctr = MapSpec(L.u32, L.u64)
    gen_seq = MapSpec(L.u32, L.u32)
    gen_tx = MapSpec(L.u32, L.u32)
    nfx_stats = MapSpec(L.u32, L.u64)


class Generator(Closing):
    def __init__(self, ns: str | None, attach_if: str | None, tx_if: str | None, *, dst_mac: bytes | str,
                 dst_ip: str, src_ip: str, src_mac: bytes | str | None = None, dport: int = 9000,
                 proto: str = "udp", size: int | None = None, nflows: int = 1, sport_base: int = 1024,
                 flows_per_addr: int | None = None, batch_size: int = DEFAULT_BATCH,
                 max_burst: int = DEFAULT_MAX_BURST, cpus: int = 1, pin_cpu: int | None = None,
                 transport: str | None = None, loop_from: tuple[str, str] | None = None):
        """loop_from: (netns, interface) of the sink's end of a loop whose other end is
        `attach_if` (nfx.traffic.loop): the generator runs as that loop's, transport `loop`."""
        if proto not in PROTOS:
            raise BadInput(f"proto must be one of {sorted(PROTOS)}, not {proto!r}")
        if loop_from is not None and (attach_if is None or tx_if is None or cpus != 1):
            raise BadInput("a loop's generator needs its end of the loop (attach_if), tx_if and one sender")
        self.proto = PROTOS[proto]
        self.size = size or min_size(proto)
        if not min_size(proto) <= self.size <= MAX_SIZE:
            raise BadInput(f"frame size {self.size} outside [{min_size(proto)}, {MAX_SIZE}] for {proto}")
        if nflows < 1:
            raise BadInput("nflows must be at least 1")
        fpa = flows_per_addr or min(nflows, 65536 - sport_base)
        if not 1 <= fpa or sport_base + min(fpa, nflows) - 1 > 65535:
            raise BadInput(f"source ports {sport_base}+{fpa} exceed 65535")
        naddr = (nflows - 1) // fpa + 1
        if int(ipaddress.IPv4Address(src_ip)) + naddr - 1 > 0xFFFFFFFF:
            raise BadInput("source addresses overflow")
        if not 1 <= batch_size <= 256:
            raise BadInput("batch_size must be in [1, 256] (kernel limit)")
        usable = os.sched_getaffinity(0)
        if not 1 <= cpus <= 64 or cpus > nflows or not set(range(cpus)) <= usable:
            raise BadInput(f"cpus (sending threads, pinned to CPUs 0..cpus-1) must be 1..64, at most the flows "
                           f"({nflows}), on CPUs this process may use ({sorted(usable)}); got {cpus}")
        if pin_cpu is not None and (cpus != 1 or pin_cpu not in usable):
            raise BadInput(f"pin_cpu (the one sending thread's CPU) needs cpus 1 and a CPU this process may use "
                           f"({sorted(usable)}); got pin_cpu {pin_cpu}, cpus {cpus}")
        self.cpus = cpus
        self.pin_cpu = pin_cpu
        # the CPU of each pinned sending thread; None: one thread, the caller's, not pinned
        self.sender_cpus = list(range(cpus)) if cpus > 1 else [pin_cpu] if pin_cpu is not None else None
        self.ns, self.attach_if, self.tx_if = ns, attach_if, tx_if
        self.nflows, self.flows_per_addr, self.sport_base = nflows, fpa, sport_base
        self.src_ip, self.dst_ip, self.dport = src_ip, dst_ip, dport
        self.batch_size, self.max_burst = batch_size, max_burst
        self._lock = threading.Lock()      # the program's counters assume one caller at a time
        self._attached = None

        if src_mac is None:
            if tx_if is None:
                raise BadInput("src_mac is needed when there is no tx_if to take it from")
            src_mac = netns.mac(tx_if, ns)
        self.frame = build_frame(src_mac, dst_mac, src_ip, dst_ip, dport, self.proto, self.size,
                                 sport=sport_base)

        if transport is not None and transport not in transmit.MODES:
            raise BadInput(f"transport is one of {', '.join(transmit.MODES)}, not {transport!r}")
        self.loop_from = loop_from
        # tests name a transport to run its program plainly
        self.transport = "loop" if loop_from else transport or transmit.mode()
        self.bpf = compile_source("gen", gen_defines(nflows, timed=self.transport != "loop"))
        self.fn = (load(self.bpf, "nfx_gen", "xdp") if self.transport in ("live", "loop") else
                   load(self.bpf, "nfx_gen_tc", "tc"))
        b = self.bpf
        self.maps = GEN_MAPS.from_bcc(b)
        tmpl = L.GenTmpl()
        ct.memmove(tmpl.hdr, self.frame[:TMPL_LEN], TMPL_LEN)
        self.maps.gen_tmpl.put(L.u32(0), tmpl)
        # attach_if/tx_if None: load only, for plain test runs of the program
        self.ifindex = self.tx_ifindex = 0
        try:
            with netns.enter(ns):
                # devmap entries, the test-run ifindex and the clone's resolve in the caller's netns
                if tx_if is not None:
                    self.tx_ifindex = netns.ifindex(tx_if)
                    self.maps.gen_tx.put(L.u32(0), L.u32(self.tx_ifindex))
                if attach_if is not None:
                    self.ifindex = netns.ifindex(attach_if)
            self._put_cfg(running=self.transport != "loop")    # a loop runs only in run()
            if attach_if is not None and self.transport in ("live", "loop"):
                self._attached = attach.attach_xdp(ns, attach_if, self.fn)
            elif attach_if is not None and tx_if is not None:
                self._attached = "tc"          # sends out of tx_if; nothing attached
        except BaseException:
            self.close()
            raise

    def _put_cfg(self, running: bool = True) -> None:
        """The program's config; not running: no flows, so it makes no packet (a loop's stop)."""
        self.maps.gen_cfg.put(L.u32(0), L.GenCfg(
            nflows=self.nflows if running else 0, flows_per_addr=self.flows_per_addr, sport_base=self.sport_base,
            l4_off=14 + 20, frame_len=self.size, proto=self.proto, cpus=self.cpus, tx_slot=0,
            tx_ifindex=self.tx_ifindex))

    # ---- sending ----
    def send(self, count: int) -> int:
        """Send `count` frames now, in calls of at most max_burst. Returns frames sent."""
        self._need_attached()
        if self.transport == "loop":
            raise BadInput("a loop's generator sends only flat out, for a time (run)")
        done = 0
        refused_since = None
        with self._lock, netns.enter(self.ns):
            while done < count:
                n = min(count - done, self.max_burst)
                got = self._call(n)
                done += got
                refused_since = self._refused(got, refused_since)
        return done

    def _need_attached(self) -> None:
        if not self._attached:
            raise BadInput("this generator was loaded without an interface: it cannot transmit")

    def _call(self, n: int, cpu: int | None = None) -> int:
        """n frames from this thread (on `cpu` if it is pinned there); returns how many went.
        Live: n. tc: what the program counted sent on this thread's CPU (r_gen_sent), fewer when
        a clone was refused (a full veth ring; its sequence number was given back, so it is
        owed again and goes later, in order) or a signal cut the run short."""
        before = self._sent_on(cpu) if self.transport == "tc" else 0
        try:
            if self.transport == "live":
                bpfsys.prog_test_run(self.fn.fd, self.frame, repeat=n, live=True,
                                     ingress_ifindex=self.ifindex, batch_size=min(self.batch_size, n))
            else:
                bpfsys.prog_test_run_skb(self.fn.fd, self.frame, repeat=n)
        except BpfError as e:
            # a signal to this process (a child's exit: nfx nf add starts an agent) cut the run
            # short: the frames that went are counted in gen_seq, which is what the sink is
            # judged against; the rest of this call is not sent again (it would arrive late)
            if getattr(e, "errno", None) != errno.EINTR:
                raise
        return n if self.transport == "live" else self._sent_on(cpu) - before

    def _sent_on(self, cpu: int | None) -> int:
        if cpu is None:
            return self.sent_total()
        return self.maps.nfx_stats.get(L.u32(L.Stat.R_GEN_SENT))[cpu]

    @staticmethod
    def _refused(got: int, since: float | None) -> float | None:
        """When the interface began taking nothing (None: it took something); an error after
        REFUSED_S of nothing."""
        if got:
            return None
        now = time.monotonic()
        if since is None:
            return now
        if now - since > REFUSED_S:
            raise BpfError(f"the generator's interface took no packet for {REFUSED_S:g} s (its veth ring "
                           f"stays full: r_gen_tx_fail)")
        time.sleep(0.001)
        return since

    def run(self, rate_pps: float | None, duration_s: float, progress=None, tick_s: float = 0.001,
            max_lag_s: float | None = None) -> dict:
        """Send at `rate_pps` (None or 0: as fast as possible) for `duration_s`.
        progress(sent, elapsed) is called about every 100 ms. Per-flow counts are this run's.
        A sender that falls behind its schedule catches up at full speed; with `max_lag_s` it
        owes at most that much of it and the rest of the schedule moves later instead (the run
        sends as many packets, over a longer time: no burst after a stall or at a rate the
        machine cannot reach)."""
        self._need_attached()
        if self.transport == "loop" and rate_pps:
            raise BadInput("a loop runs flat out: it has no rate", hint="no --rate with a loop")
        before = self.per_flow_total()
        with self._lock:
            if self.transport == "loop":
                sent, calls, elapsed = self._circulate(duration_s, progress)
            elif self.sender_cpus is None:
                with netns.enter(self.ns):
                    sent, calls, elapsed = self._loop(rate_pps, duration_s, progress, tick_s, max_lag_s=max_lag_s)
            else:
                sent, calls, elapsed = self._parallel(rate_pps, duration_s, progress, tick_s, max_lag_s)
        after = self.per_flow_total()
        per_flow = [(a - b) & 0xFFFFFFFF for a, b in zip(after, before)]
        return {"requested": sent, "sent": sum(per_flow), "per_flow": per_flow, "elapsed_s": elapsed,
                "pps": sum(per_flow) / elapsed if elapsed else 0.0, "calls": calls,
                "rate_pps": rate_pps or None, "cpus": self.cpus, "pin_cpu": self.pin_cpu,
                "transport": self.transport}

    def _parallel(self, rate_pps, duration_s: float, progress, tick_s: float,
                  max_lag_s: float | None = None) -> tuple[int, int, float]:
        """One _loop per sender CPU (0..cpus-1, or pin_cpu alone), each thread pinned there, at
        rate / senders, started together."""
        k = len(self.sender_cpus)
        start = threading.Barrier(k)
        res: list = [None] * k
        sent_now = [0] * k

        def one(i: int) -> None:
            try:
                os.sched_setaffinity(0, {self.sender_cpus[i]})   # this thread only (Linux: a task's own affinity)
                with netns.enter(self.ns):
                    prog = None
                    if progress and i == 0:
                        prog = lambda n, el: progress(n + sum(sent_now[1:]), el)   # noqa: E731
                    start.wait(5)
                    res[i] = self._loop(rate_pps / k if rate_pps else None, duration_s, prog, tick_s,
                                        lambda n: sent_now.__setitem__(i, n), max_lag_s, self.sender_cpus[i])
            except BaseException as e:       # noqa: BLE001 -- re-raised in the caller below
                res[i] = e
                start.abort()

        threads = [threading.Thread(target=one, args=(i,), name=f"gen-cpu{c}") for i, c in enumerate(self.sender_cpus)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = [r for r in res if isinstance(r, BaseException)]
        if errors:       # the cause first, not a thread's broken barrier
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        return sum(r[0] for r in res), sum(r[1] for r in res), max(r[2] for r in res)

    def _loop(self, rate_pps, duration_s: float, progress, tick_s: float, note=None,
              max_lag_s: float | None = None, cpu: int | None = None) -> tuple[int, int, float]:
        """The rate loop of one sending thread (in the generator's netns; pinned to `cpu` if
        given): (sent, calls, elapsed). What the transport could not send stays owed."""
        sent, calls, t_prog = 0, 0, 0.0
        refused_since = None
        total = int(rate_pps * duration_s) if rate_pps else None
        most_owed = max(1, int(rate_pps * max_lag_s)) if rate_pps and max_lag_s is not None else None
        t0 = time.perf_counter()
        late = 0.0                       # how far the schedule moved (max_lag_s)
        while True:
            el = time.perf_counter() - t0
            if total is not None:
                if sent >= total:
                    break
                owed = min(int(rate_pps * (el - late)), total) - sent
                if most_owed is not None and owed > most_owed:
                    late += (owed - most_owed) / rate_pps
                    owed = most_owed
            else:
                if el >= duration_s:
                    break
                owed = self.max_burst
            if owed > 0:
                n = min(owed, self.max_burst)
                got = self._call(n, cpu)
                sent += got
                calls += 1
                refused_since = self._refused(got, refused_since)
                if note:
                    note(sent)
            if progress and el - t_prog >= 0.1:
                t_prog = el
                progress(sent, el)
            if total is not None and owed <= self.max_burst:
                # caught up: sleep to the next tick (or the next packet's due time at
                # rates under one packet per tick) rather than spin on a shared CPU
                now = time.perf_counter() - t0
                due = max((sent + 1) / rate_pps + late, (int(now / tick_s) + 1) * tick_s)
                time.sleep(max(due - now, 0))
        elapsed = time.perf_counter() - t0
        return sent, calls, elapsed

    def _circulate(self, duration_s: float, progress) -> tuple[int, int, float]:
        """A loop's run: seed it, let it go round for duration_s, stop it. (sent, 1, elapsed)"""
        t0, sent0 = time.perf_counter(), self.sent_total()
        self._put_cfg(running=True)
        try:
            loop.seed(*self.loop_from, self.size, cpu=self.pin_cpu)
            el, t_prog = 0.0, 0.0
            while el < duration_s:
                time.sleep(min(0.05, duration_s - el))
                el = time.perf_counter() - t0
                if progress and el - t_prog >= 0.1:
                    t_prog = el
                    progress(self.sent_total() - sent0, el)
                if el >= REFUSED_S and self.sent_total() == sent0:
                    raise BpfError(f"no frame went round the loop in {REFUSED_S:g} s (is {self.attach_if} "
                                   f"the peer of {self.loop_from[1]} in {self.loop_from[0]}?)")
        finally:
            self._put_cfg(running=False)
        return self.sent_total() - sent0, 1, time.perf_counter() - t0

    # ---- reading / housekeeping ----
    def per_flow_total(self) -> list[int]:
        """Frames sent per flow since load or reset (the program's next sequence numbers)."""
        n, _, vals = self.maps.gen_seq.export()
        return list(vals[:min(n, self.nflows)])          # the array is a capacity

    def sent_total(self) -> int:
        """Frames sent since load, over every CPU: one per-CPU counter, cheap to poll."""
        return self.maps.nfx_stats.sum_percpu(L.u32(L.Stat.R_GEN_SENT))

    def stats(self) -> dict[str, int]:
        return stats_dict(self.maps.nfx_stats)

    def reset(self) -> None:
        """Restart the flow rotation and every flow's sequence at 0 (pair with Sink.reset)."""
        with self._lock:
            self.maps.gen_seq.clear()
            self.maps.gen_ctr.clear()

    def close(self) -> None:
        if self._attached and self.transport == "loop":
            self._put_cfg(running=False)        # nothing more goes round
        if self._attached and self._attached != "tc":
            attach.detach_xdp(self.ns, self.attach_if, self._attached)
        self._attached = None
        if getattr(self, "bpf", None) is not None:
            self.bpf.cleanup()
            self.bpf = None
