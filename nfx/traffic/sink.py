"""Sequence-checking sink: bpf/sink.bpf.c on the receiving host's interface. Generator packets
are counted per flow against a seen-bitmap (distinct, duplicates, reordering, latency) and
dropped in XDP; the host's own traffic passes to its stack.

Exact accounting, per flow f that sent s_f packets (seqs 0 .. s_f-1):
  lost_f       = s_f - distinct seqs below s_f received
  duplicated_f = received_f - distinct_f - out_of_window_f  (a seq seen again, however late)
  reordered_f  = distinct packets whose seq was below the flow's highest seen seq
  unexpected_f = distinct seqs at or above s_f (never generated), plus bad_flow overall
None can cancel another. Every counted packet is also checked for its bytes: bad_len (a frame
longer than its IPv4 datagram: e.g. a stamper's trailer an NF let through) and bad_payload (the
generator's zero pad word or payload tail is not zero); either makes a run not clean.
out_of_window_f counts packets whose seq's bitmap word was already
reused by a block `window` seqs newer: they are neither judged dup nor new, and make the run
not `exact`; that cannot happen when s_f <= window.

With echo=True every counted generator packet is reflected back out of the interface (XDP_TX,
addresses and ports swapped, payload kept): a second Sink on the sending host then counts the
echoes per flow and its latency histogram is the round-trip time (one clock: the sender's).
With loop_if they are redirected round a traffic loop instead (nfx.traffic.loop), not timed."""
import ctypes as ct
import re
import struct

from .. import layout as L
from ..closing import Closing
from ..errors import BadInput, NfxError
from ..loader import attach, netns
from ..loader.compile import compile_source, load, size_class
from ..loader.maps import stats_dict
from ..loader.spec import MapSet, MapSpec

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
_FLOW_FMT = "=QQQQQQ"            # struct nfx_sink_flow
assert struct.calcsize(_FLOW_FMT) == ct.sizeof(L.SinkFlow)
# default bitmap budget, all flows together: 2^21 words of 16 B = 32 MB, 2^27 seqs; a flow gets
# the largest power of two of words that fits (1000 flows: 131072 seqs each)
BITMAP_WORDS = 1 << 21


def window_words(nflows: int, window: int | None = None) -> int:
    """Bitmap words per flow: enough for `window` seqs (rounded up to a power of two), or by
    default the largest power of two that keeps nflows of them within BITMAP_WORDS."""
    if window is not None:
        if window < 1:
            raise BadInput("the sink window must be at least 1 seq")
        want = -(-window // 64)
    else:
        want = max(BITMAP_WORDS // nflows, 1)
        want = 1 << (want.bit_length() - 1)          # round down to a power of two
    words = 1 << (want - 1).bit_length()             # (explicit window: round up)
    if nflows * words > 1 << 31:
        raise BadInput(f"{nflows} flows x {words * 64} seqs is too large a sink bitmap")
    return words


def sink_defines(nflows: int, words: int, pass_gen: bool = False, echo: bool = False, loop: bool = False) -> dict:
    """The sink's build: capacities (powers of two; the flow count and the words per flow are
    set in sink_cfg at run time), so that one image serves every flow count of a size class."""
    defines = {"NFX_SINK_FLOWS": size_class(nflows), "NFX_SINK_BITS": size_class(nflows * words, BITMAP_WORDS),
               "NFX_SINK_VERDICT": XDP_PASS if pass_gen else XDP_DROP}
    if echo:
        defines["NFX_SINK_ECHO"] = 1        # a build of its own: a plain sink pays nothing for it
    if loop:
        defines["NFX_SINK_LOOP"] = 1
    return defines


def bucket_bounds(i: int) -> tuple[int, int]:
    """[low, high) in ns of latency bucket i (layout described in nfx_bench.h)."""
    s = L.LAT_SUB
    if i < s:
        return i, i + 1
    e = i // s + 1
    width = 1 << (e - 2)
    low = (1 << e) + (i % s) * width
    return low, low + width


def percentile(hist: list[int], q: float) -> float | None:
    """Latency (ns) below which a fraction q of samples fall: the containing bucket's midpoint."""
    total = sum(hist)
    if not total:
        return None
    rank = q * total
    acc = 0
    for i, c in enumerate(hist):
        acc += c
        if acc >= rank and c:
            lo, hi = bucket_bounds(i)
            return (lo + hi) / 2
    return None


def over(hist: list[int], limit_ns: int) -> int:
    """Samples in buckets wholly above `limit_ns` (short by at most the bucket `limit_ns` falls
    in: a bucket is 1/NFX_LAT_SUB of its power of two wide)."""
    return sum(c for i, c in enumerate(hist) if c and bucket_bounds(i)[0] >= limit_ns)


class SINK_MAPS(MapSet):
    """The sink program's maps (bpf/sink.bpf.c)."""
    sink_flows = MapSpec(L.u32, L.SinkFlow)
    sink_bits = MapSpec(L.u32, L.SinkWord)
    sink_cfg = MapSpec(L.u32, L.SinkCfg)
    sink_lat = MapSpec(L.u32, L.u64)
    sink_lat_max = MapSpec(L.u32, L.u64)
    sink_loop = MapSpec(L.u32, L.u32)
    nfx_stats = MapSpec(L.u32, L.u64)


class Sink(Closing):
    def __init__(self, ns: str | None, ifname: str | None, nflows: int, pass_gen: bool = False,
                 window: int | None = None, echo: bool = False, multi_queue: bool = False,
                 loop_if: str | None = None):
        """ifname None: load only (for plain test runs). pass_gen: generator packets go on to the
        stack after counting (tests use it to see them) instead of being dropped. echo: they are
        reflected back out of `ifname` instead (see the module docstring). window: seqs
        per flow the bitmap holds (rounded up to 64 x a power of two; default: see
        window_words); a flow's run that fits it is judged exactly, whatever the reordering.
        multi_queue: accept an interface with several rx queues; only when every flow is sent
        from one CPU (a Generator with cpus > 1, or one pinned sender), so that each flow takes
        one queue, one NAPI, at every hop and still has one writer here. loop_if: they are
        redirected out of that interface of `ns` instead, the sink's end of a traffic loop
        (nfx.traffic.loop)."""
        if nflows < 1:
            raise BadInput("nflows must be at least 1")
        if pass_gen + echo + (loop_if is not None) > 1:
            raise BadInput("a sink passes generator packets to the stack, echoes them or sends them round a "
                           "loop: one of those at most")
        self.ns, self.ifname, self.nflows, self.echo = ns, ifname, nflows, echo
        self.words = window_words(nflows, window)
        self.window = self.words * 64
        self._attached = None
        self._epoch = 1
        if ifname is not None and not multi_queue:
            self._check_one_queue()
        self.bpf = compile_source("sink", sink_defines(nflows, self.words, pass_gen, echo, loop_if is not None))
        self.fn = load(self.bpf, "nfx_sink", "xdp")
        b = self.bpf
        self.maps = SINK_MAPS.from_bcc(b)
        self._put_cfg()
        try:
            if loop_if is not None:
                with netns.enter(ns):        # a devmap entry's ifindex resolves in the caller's netns
                    self.maps.sink_loop.put(L.u32(0), L.u32(netns.ifindex(loop_if)))
            if ifname is not None:
                self._attached = attach.attach_xdp(ns, ifname, self.fn)
        except BaseException:
            self.close()
            raise

    def _put_cfg(self) -> None:
        self.maps.sink_cfg.put(L.u32(0), L.SinkCfg(epoch=self._epoch, nflows=self.nflows, words=self.words))

    def _check_one_queue(self) -> None:
        # several rx queues would give one flow several concurrent writers (see sink.bpf.c)
        # (veth allocates one queue per CPU but enables one: read the current setting)
        try:
            out = netns.run(["ethtool", "-l", self.ifname], ns=self.ns)
        except (NfxError, OSError):
            return                      # no ethtool: cannot check
        m = re.search(r"Current hardware settings:.*?RX:\s*(\d+)", out, re.S)
        if m and int(m.group(1)) > 1:
            raise BadInput(f"{self.ifname} has {m.group(1)} rx queues enabled; the sink needs exactly one",
                           hint=f"ethtool -L {self.ifname} rx 1")

    # ---- reading ----
    def received_total(self) -> int:
        """Generator packets counted since reset: one per-CPU counter, cheap to poll."""
        return self.maps.nfx_stats.sum_percpu(L.u32(L.Stat.R_SINK_RX))

    def echoed_total(self) -> int:
        """Generator packets reflected since reset: an echo sink's XDP_TX verdicts (its only ones)."""
        return self.maps.nfx_stats.sum_percpu(L.u32(L.Stat.V_TX))

    def flows(self) -> list[L.SinkFlow]:
        n, _, vals = self.maps.sink_flows.export()
        return [vals[i] for i in range(min(n, self.nflows))]     # the array is a capacity

    def _flow_tuples(self):
        """(received, dup, reordered, distinct, out_of_window, high) per flow, without a ctypes object each
        (a million flows read in well under a second)."""
        n, _, vals = self.maps.sink_flows.export()
        n = min(n, self.nflows)
        return struct.iter_unpack(_FLOW_FMT, ct.string_at(vals, n * ct.sizeof(L.SinkFlow)))

    def histogram(self) -> list[int]:
        n, _, vals = self.maps.sink_lat.export()
        hist = [0] * L.LAT_BUCKETS
        for i in range(n):
            hist[i] = sum(vals[i])
        return hist

    def stats(self) -> dict[str, int]:
        return stats_dict(self.maps.nfx_stats)

    def _beyond(self, flow: int, lo: int, high: int, words) -> tuple[int, bool]:
        """Distinct seqs in [lo, high) of `flow` the bitmap holds, and whether that count is
        exact (False when a block of the range was overwritten by a newer one, or the range is
        wider than the window). `words` is the exported bitmap."""
        first, last = lo >> 6, (high - 1) >> 6
        exact = last - first < self.words
        n = 0
        for blk in range(max(first, last - self.words + 1), last + 1):
            w = words[flow * self.words + (blk & (self.words - 1))]
            if w.epoch != self._epoch or w.blk < blk:
                continue                                    # nothing of this block arrived
            if w.blk > blk:
                exact = False
                continue
            bits = w.bits
            if blk == first:
                bits &= ~((1 << (lo & 63)) - 1)
            n += bin(bits).count("1")
        return n, exact

    def read(self, sent_per_flow: list[int] | None = None) -> dict:
        """Totals since attach/reset (accounting in the module docstring). With the generator's
        per-flow counts also: sent, lost, unexpected, exact (no packet left unjudged) and clean
        (exact, and nothing lost, duplicated, reordered, unexpected, aborted, bad_len or bad_payload)."""
        if sent_per_flow is not None and len(sent_per_flow) != self.nflows:
            raise BadInput(f"sent_per_flow has {len(sent_per_flow)} flows, the sink {self.nflows}")
        received = dup = reordered = distinct = oow = lost = beyond = 0
        exact = True
        words = None
        sent = iter(sent_per_flow) if sent_per_flow is not None else None
        for f, (rcv, d, reo, dis, ow, high) in enumerate(self._flow_tuples()):
            received += rcv
            dup += d
            reordered += reo
            distinct += dis
            oow += ow
            if sent is None:
                continue
            s_f = next(sent)
            extra = 0
            if high > s_f:                                  # seqs never generated arrived
                if words is None:
                    words = self.maps.sink_bits.export()[2]
                extra, ok = self._beyond(f, s_f, high, words)
                exact = exact and ok
            lost += max(s_f - (dis - extra), 0)     # below 0 only when not exact
            beyond += extra
        st = self.stats()
        bad_len, bad_payload = st.get("r_sink_bad_len", 0), st.get("r_sink_bad_payload", 0)
        out = {"received": received, "unique": distinct, "duplicated": dup, "reordered": reordered,
               "out_of_window": oow, "window": self.window}
        if sent_per_flow is not None:
            exact = exact and oow == 0
            unexpected = beyond + st.get("r_sink_bad_flow", 0)
            out.update(sent=sum(sent_per_flow), lost=lost, unexpected=unexpected, exact=exact,
                       clean=exact and not (lost or dup or reordered or unexpected or st.get("v_aborted", 0) or
                                            bad_len or bad_payload))
        hist = self.histogram()
        mx = self.maps.sink_lat_max.get(L.u32(0))
        p50, p99 = percentile(hist, 0.5), percentile(hist, 0.99)
        out.update(lat_p50_us=None if p50 is None else p50 / 1e3,
                   lat_p99_us=None if p99 is None else p99 / 1e3,
                   lat_max_us=max(mx) / 1e3 if mx is not None else None)
        out.update(foreign=st.get("r_sink_foreign", 0), bad_flow=st.get("r_sink_bad_flow", 0),
                   aborted=st.get("v_aborted", 0), bad_len=bad_len, bad_payload=bad_payload)
        if self.echo:
            out["echoed"] = self.echoed_total()
        return out

    def reset(self) -> None:
        """Forget every flow's counts and bitmap (by a new epoch: nothing to clear), the
        histogram and the counters."""
        self._epoch = self._epoch % 0xFFFFFFFF + 1          # never 0
        self._put_cfg()
        for m in (self.maps.sink_flows, self.maps.sink_lat, self.maps.sink_lat_max, self.maps.nfx_stats):
            m.clear()

    def close(self) -> None:
        if self._attached:
            attach.detach_xdp(self.ns, self.ifname, self._attached)
            self._attached = None
        if getattr(self, "bpf", None) is not None:
            self.bpf.cleanup()
            self.bpf = None
