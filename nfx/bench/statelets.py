"""nfx bench statelets: how fast statelets are written, read and applied, each leg on its own.

Two instances of one NF kind (NAT or IDS) in a throwaway netns: src, whose datapath mirrors every
packet (a wildcard STATELET filter), and dst, which replays src's statelets. The traffic is the
real NF program run by BPF_PROG_TEST_RUN on N flows x P packets, round-robin over the flows
(UDP; the IDS also sees a signature in 1 packet in 16, and 100 flows per source host over 50
ports). Half the flows exist before mirroring starts (they are in the snapshot); the other half
are created in the stream.

  ring    the NF's program writing records into the ring, a consumer thread taking them as they
          come (so the ring never fills): statelets and records per second of kernel time (the
          test runs' own duration), drops (r_statelet_ring_full and r_statelet_too_big). Wall time, with one
          test-run syscall per packet from Python, is shown beside it.
  reader  stbatch.poll_batch on a ring filled by the same traffic again (src reset):
          the mmapped ring taken in batches of <= 1 MiB and parsed into statelet arrays.
  apply   StreamApplier(dst).install(snapshot), then .apply(batch) for each of those batches,
          maps written batch by batch; dst's state must then equal src's. Also onto a Tables.
Baselines in the same run (not judged): parse_record per record, and replay.apply_slow (one
statelet at a time, the reference rules) onto a Tables."""
import ctypes as ct
import os
import struct
import threading
import time
from pathlib import Path

from .. import layout as L
from ..errors import BadInput
from ..loader import bpfsys as sys_
from ..loader import netns
from ..nfs.base import Wiring
from ..nfs.ids import IDS, IdsConfig
from ..nfs.nat import NAT, NatConfig
from ..state import ops
from ..state import replay as R
from ..state.fastapply import StreamApplier, apply_fast
from ..state.statelets import StateletReader, lost, parse_record
from ..state.stbatch import parse_span, poll_batch

TARGET = 1_000_000
STATE = ("per-flow", "multi-flow")
DST_IP = "10.0.2.2"
PEER_IN, PEER_OUT = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
BATCH_KIB = 4096


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ip(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0, _ip(src), _ip(dst)))
    ip[10:12] = struct.pack("!H", _csum(bytes(ip)))
    eth = b"\x02\x00\x00\x00\x00\xbb\x02\x00\x00\x00\x00\xaa\x08\x00"
    return eth + bytes(ip) + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def frames(kind: str, flows: int) -> list[bytes]:
    """One frame per flow (a flow's packets are the same frame again)."""
    out = []
    for f in range(flows):
        if kind == "nat":
            src, sport, dport, pay = f"10.0.1.{2 + f % 250}", 1024 + f // 250, 53, b"q" * 18
        else:
            h = f // 100
            src, sport, dport = f"10.0.{1 + h // 250}.{2 + h % 250}", 1024 + f % 100, 1000 + f % 50
            pay = b"EVIL-payload" if f % 16 == 0 else b"ok-payload--"
        out.append(udp_frame(src, DST_IP, sport, dport, pay))
    return out


class _Runner:
    """BPF_PROG_TEST_RUN of one program on one frame at a time, with the syscall's arguments
    built once: what is left per packet is the syscall."""

    def __init__(self, fd: int, ifindex: int, frames_: list[bytes]):
        self.buf = ct.create_string_buffer(b"".join(frames_))
        self.at, o = [], 0
        for f in frames_:
            self.at.append((ct.addressof(self.buf) + o, len(f)))
            o += len(f)
        self.out = ct.create_string_buffer(2048)
        self.ctx = sys_.XdpMd(ingress_ifindex=ifindex)
        self.attr = sys_._TestRunAttr(prog_fd=fd, data_out=ct.addressof(self.out), repeat=1,
                                      ctx_in=ct.addressof(self.ctx), ctx_size_in=ct.sizeof(self.ctx))

    def run(self, order: list[int]) -> int:
        """Runs the frames in `order`; returns the kernel's own ns, summed."""
        a, ctx, at, kns = self.attr, self.ctx, self.at, 0
        call, ref, size = sys_._libc.syscall, ct.byref(a), ct.sizeof(a)
        for i in order:
            addr, n = at[i]
            a.data_in, a.data_size_in, a.data_size_out = addr, n, 2048
            ctx.data_end = n
            if call(sys_.SYS_BPF, sys_.PROG_TEST_RUN, ref, size) < 0:
                raise BadInput(f"BPF_PROG_TEST_RUN failed: {os.strerror(ct.get_errno())}")
            kns += a.duration
        return kns


def _fresh(nf, cfg) -> None:
    for name in ("nat_fwd", "nat_rev", "nat_ports", "ids_flows", "ids_hosts", "ids_hostports",
                 "ids_global", "ids_sig_hits", "ids_sigs", "nfx_marks", "nfx_filters", "nfx_stats", "nfx_gate_cfg"):
        m = nf.maps.get(name)
        if m is not None:
            m.clear()
    nf.configure(cfg)


def _traffic(nf, runner: _Runner, flows: int, pkts: int, snap_cb=None) -> tuple[int, float, object]:
    """Half the flows before mirroring (one packet each), the snapshot, then mirroring on and
    `pkts` rounds over all flows. Returns (kernel ns, wall s, snapshot chunks)."""
    runner.run(list(range(flows // 2)))
    snap = list(ops.export(nf, STATE))
    nf.gate.put_filter(0, L.Filter(action=int(L.Action.STATELET), flags=L.FILTER_USED))
    order = list(range(flows)) * pkts
    t0 = time.perf_counter()
    kns = runner.run(order)
    return kns, time.perf_counter() - t0, snap


def _leg(name: str, statelets: int, records: int, seconds: float, drops: int = 0, **extra) -> dict:
    rate = statelets / seconds if seconds else 0.0
    return {"leg": name, "statelets": statelets, "records": records, "seconds": seconds,
            "statelets_per_s": rate, "records_per_s": records / seconds if seconds else 0.0,
            "drops": drops, "meets_1m": rate >= TARGET, **extra}


def run(kind: str = "nat", flows: int = 10_000, pkts: int = 5, batch_kib: int = BATCH_KIB, reps: int = 3,
        progress=lambda m: None) -> dict:
    """Every leg `reps` times (the traffic afresh each time); the run with the median rate is
    reported per leg, with all runs' rates beside it."""
    if kind not in ("nat", "ids"):
        raise BadInput(f"--nf must be nat or ids, not {kind!r}")
    if not 2 <= flows <= 60_000:
        raise BadInput(f"--flows must be 2..60000, not {flows}")
    if not 1 <= pkts <= 50:
        raise BadInput(f"--packets must be 1..50, not {pkts}")
    if not 16 <= batch_kib <= 16384:
        raise BadInput(f"--batch-kib must be 16..16384, not {batch_kib}")
    if not 1 <= reps <= 20:
        raise BadInput(f"--reps must be 1..20, not {reps}")
    cls = NAT if kind == "nat" else IDS
    cfg = NatConfig(inside="10.0.1.0/24", pool="10.0.2.100-10.0.2.103") if kind == "nat" else IdsConfig()
    tag = f"sb{os.getpid() % 10000}"
    ns = f"{tag}n"
    pins = Path(f"/sys/fs/bpf/nfx/{tag}-{os.getpid()}")
    made: list = []
    netns.add(ns)
    try:
        inst = {}
        for role in ("s", "d"):
            a, b = f"{tag}{role}i", f"{tag}{role}o"
            for x in (a, b):
                netns.ip("link", "add", x, "type", "veth", "peer", "name", x.upper(), ns=ns)
                for y in (x, x.upper()):
                    netns.ip("link", "set", y, "up", ns=ns)
            w = Wiring(ns, (a, b), (PEER_IN, PEER_OUT))
            progress(f"compiling {kind} ({role})")
            inst[role] = cls.create(f"{tag}{role}", w, pins / role, cfg, max_flows=max(4096, 2 * flows))
            made.append((cls, w, pins / role))
        src, dst = inst["s"], inst["d"]
        fr = frames(kind, flows)
        with netns.enter(ns):
            runner = _Runner(src.fn.fd, netns.ifindex(f"{tag}si"), fr)
        reader = StateletReader(src)
        try:
            runs = []
            for i in range(reps):
                progress(f"run {i + 1} of {reps}")
                runs.append(_measure(kind, flows, pkts, batch_kib << 10, src, dst, cfg, runner, reader, ns, progress))
            return _median(runs)
        finally:
            reader.close()
    finally:
        for c, w, pd in made:
            c.destroy(w, pd)
        netns.delete(ns)


def _reset(src, kind, cfg) -> None:
    _fresh(src, cfg)
    if kind == "ids":
        src.add_signature(77, b"EVIL", offset=0, proto="udp")


def _measure(kind, flows, pkts, batch, src, dst, cfg, runner, reader, ns, progress) -> dict:
    load = os.getloadavg()[0]
    # ---- the same traffic without mirroring: what the program costs anyway
    progress("ring: the traffic unmirrored, for the program's own cost")
    _reset(src, kind, cfg)
    with netns.enter(ns):
        runner.run(list(range(flows // 2)))
        plain_ns = runner.run(list(range(flows)) * pkts)
    _reset(src, kind, cfg)
    # ---- ring: a consumer takes records while the program writes them
    progress("ring: mirrored traffic with a concurrent consumer")
    taken, stop = [], threading.Event()

    def consume():
        # every millisecond, not on every wakeup: a consumer that is always caught up makes the
        # kernel queue a wakeup (irq_work) for every record it writes
        while not stop.is_set():
            got = reader.ring.take(0)
            if len(got[1]):
                taken.append(got)
            stop.wait(0.001)
        while len((got := reader.ring.take(0))[1]):
            taken.append(got)

    before = src.stats()
    th = threading.Thread(target=consume, daemon=True)
    th.start()
    with netns.enter(ns):
        kns, wall, _ = _traffic(src, runner, flows, pkts)
    stop.set()
    th.join()
    st = src.stats()
    recs = st.get("r_statelet", 0) - before.get("r_statelet", 0)
    drops = lost(st) - lost(before)
    n_st = sum(len(parse_span(*t)) for t in taken)
    n_rec = sum(len(t[1]) for t in taken)
    npk = flows * pkts
    ring = _leg("ring", n_st, recs, kns / 1e9, drops, wall_s=wall, wall_statelets_per_s=n_st / wall,
                packets=npk, taken_records=n_rec, ns_per_packet=kns / npk, unmirrored_ns_per_packet=plain_ns / npk)
    # ---- reader: the same traffic again into a ring nobody reads, then taken out in batches
    progress("reader: refilling the ring, then reading it")
    _reset(src, kind, cfg)
    with netns.enter(ns):
        _, _, snap = _traffic(src, runner, flows, pkts)
    live = list(ops.export(src, STATE))
    drops2 = lost(src.stats())
    pend = reader.ring.pending()
    w0 = dict(reader.ring.walks)
    t0 = time.perf_counter()
    batches = []
    while True:
        b = poll_batch(reader, 0, batch)
        if not b.records:
            break
        batches.append(b)
    t_read = time.perf_counter() - t0
    st2 = sum(map(len, batches))
    rec2 = sum(b.records for b in batches)
    rdr = _leg("reader", st2, rec2, t_read, drops2, batches=len(batches), ring_bytes=pend,
               walks={k: v - w0[k] for k, v in reader.ring.walks.items()})
    # baseline: the old parse, one record at a time (records rebuilt from the batches' words)
    recs_b = _records(batches)
    t0 = time.perf_counter()
    n_old = sum(len(parse_record(x)) for x in recs_b)
    base_parse = _leg("baseline: parse_record", n_old, len(recs_b), time.perf_counter() - t0)
    # ---- apply: onto dst's maps through a StreamApplier, then onto a Tables
    progress("apply: snapshot into dst, then the batches")
    _fresh(dst, cfg)
    sa = StreamApplier(dst)
    t0 = time.perf_counter()
    sa.install(snap)
    t_inst = time.perf_counter() - t0
    rep = {}
    t0 = time.perf_counter()
    for b in batches:
        sa.apply(b, rep)
    t_apply = time.perf_counter() - t0
    same = ops.diff(list(ops.export(dst, STATE)), live)["same"]
    app = _leg("apply", st2, rec2, t_apply, same=same, install_s=t_inst,
               report={k: rep[k] for k in ("applied", "stale", "deleted", "absent_deletes", "orphans")})
    tab = R.Tables.from_chunks(snap)
    t0 = time.perf_counter()
    for b in batches:
        apply_fast(tab, b)
    app_t = _leg("apply (Tables)", st2, rec2, time.perf_counter() - t0,
                 same=ops.diff(tab.chunks(), live)["same"])
    slow = R.Tables.from_chunks(snap)
    t0 = time.perf_counter()
    R.apply_slow(slow, recs_b)
    base_apply = _leg("baseline: apply_slow", n_old, len(recs_b), time.perf_counter() - t0,
                      same=ops.diff(slow.chunks(), live)["same"])
    return {"nf": kind, "flows": flows, "packets_per_flow": pkts, "batch_kib": batch >> 10, "target_per_s": TARGET,
            "loadavg_1m": load,
            "entries_live": sum(c.count for c in live), "legs": [ring, rdr, app, app_t],
            "baselines": [base_parse, base_apply],
            "same": same and app_t["same"] and base_apply["same"]}


def _median(runs: list[dict]) -> dict:
    """One result: per leg, the run with the median statelets/s, and every run's rate."""
    out = dict(runs[0])
    out["reps"] = len(runs)
    out["loadavg_1m"] = max(r["loadavg_1m"] for r in runs)
    out["same"] = all(r["same"] for r in runs)
    for part in ("legs", "baselines"):
        legs = []
        for i in range(len(runs[0][part])):
            these = sorted((r[part][i] for r in runs), key=lambda x: x["statelets_per_s"])
            leg = dict(these[len(these) // 2])
            leg["runs_statelets_per_s"] = [x["statelets_per_s"] for x in (r[part][i] for r in runs)]
            leg["drops"] = max(x["drops"] for x in these)
            if "same" in leg:
                leg["same"] = all(x["same"] for x in these)
            legs.append(leg)
        out[part] = legs
    return out


def _records(batches) -> list[bytes]:
    """The records of the batches again, as bytes (for the one-record-at-a-time baselines)."""
    out = []
    for b in batches:
        out += b.raw_records()
    return out


def note(leg: dict) -> str:
    """A leg's extra figures, in a few words."""
    if leg["leg"] == "ring":
        return (f"kernel time; {leg['ns_per_packet']:.0f} ns/pkt mirrored vs {leg['unmirrored_ns_per_packet']:.0f} "
                f"unmirrored; wall {leg['wall_statelets_per_s'] / 1e6:.2f} M/s (a syscall per packet)")
    if leg["leg"] == "reader":
        return f"{leg['batches']} batches, {leg['ring_bytes'] / 1e6:.1f} MB in the ring"
    if leg["leg"] == "apply":
        return f"onto dst's maps (StreamApplier); snapshot install {leg['install_s'] * 1e3:.0f} ms"
    if leg["leg"] == "apply (Tables)":
        return "replay.apply onto a Tables snapshot; " + ("state equal" if leg["same"] else "STATE DIFFERS")
    if "parse_record" in leg["leg"]:
        return "one record at a time, the same records"
    if "apply_slow" in leg["leg"]:
        return "one statelet at a time onto a Tables; " + ("state equal" if leg["same"] else "STATE DIFFERS")
    return ""
