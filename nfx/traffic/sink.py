"""Sequence-checking sink: bpf/sink.bpf.c on the receiving host's interface. Generator packets
are counted per flow (duplicates, reordering, latency) and dropped in XDP; the host's own
traffic passes to its stack."""
import ctypes as ct
import re
import struct

from .. import layout as L
from ..closing import Closing
from ..errors import BadInput, NfxError
from ..loader import attach, netns
from ..loader.compile import compile_source, load
from ..loader.maps import Map

XDP_DROP, XDP_PASS = 1, 2
_FLOW_FMT = "=QQQQII"            # struct nfx_sink_flow
assert struct.calcsize(_FLOW_FMT) == ct.sizeof(L.SinkFlow)


def bucket_bounds(i: int) -> tuple[int, int]:
    """[low, high) in ns of latency bucket i (layout described in nfx.h)."""
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


class Sink(Closing):
    def __init__(self, ns: str | None, ifname: str | None, nflows: int, pass_gen: bool = False):
        """ifname None: load only (for plain test runs). pass_gen: generator packets go on to the
        stack after counting (tests use it to see them) instead of being dropped."""
        if nflows < 1:
            raise BadInput("nflows must be at least 1")
        self.ns, self.ifname, self.nflows = ns, ifname, nflows
        self._attached = None
        if ifname is not None:
            self._check_one_queue()
        self.bpf = compile_source("sink", {"NFX_SINK_FLOWS": nflows,
                                           "NFX_SINK_VERDICT": XDP_PASS if pass_gen else XDP_DROP})
        self.fn = load(self.bpf, "nfx_sink", "xdp")
        b = self.bpf
        self.maps = {
            "sink_flows": Map(b["sink_flows"].map_fd, L.u32, L.SinkFlow),
            "sink_lat": Map(b["sink_lat"].map_fd, L.u32, L.u64),
            "sink_lat_max": Map(b["sink_lat_max"].map_fd, L.u32, L.u64),
            "nfx_stats": Map(b["nfx_stats"].map_fd, L.u32, L.u64),
        }
        if ifname is not None:
            try:
                self._attached = attach.attach_xdp(ns, ifname, self.fn)
            except BaseException:
                self.close()
                raise

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
        return self.maps["nfx_stats"].sum_percpu(L.u32(L.Stat.R_SINK_RX))

    def flows(self) -> list[L.SinkFlow]:
        n, _, vals = self.maps["sink_flows"].export()
        return [vals[i] for i in range(n)]

    def _flow_tuples(self):
        """(received, dup, reordered, window, high, pad) per flow, without a ctypes object each
        (a million flows read in well under a second)."""
        n, _, vals = self.maps["sink_flows"].export()
        return struct.iter_unpack(_FLOW_FMT, ct.string_at(vals, n * ct.sizeof(L.SinkFlow)))

    def histogram(self) -> list[int]:
        n, _, vals = self.maps["sink_lat"].export()
        hist = [0] * L.LAT_BUCKETS
        for i in range(n):
            hist[i] = sum(vals[i])
        return hist

    def stats(self) -> dict[str, int]:
        from ..nfs.base import stats_dict
        return stats_dict(self.maps["nfx_stats"])

    def read(self, sent_per_flow: list[int] | None = None) -> dict:
        """Totals since attach/reset. With the generator's per-flow counts: lost =
        sum(sent_f - unique_received_f), and `unexpected` = unique packets beyond what was sent
        (a duplicate older than the 64-packet window is counted as a late packet, not a dup)."""
        if sent_per_flow is not None and len(sent_per_flow) != self.nflows:
            raise BadInput(f"sent_per_flow has {len(sent_per_flow)} flows, the sink {self.nflows}")
        received = dup = reordered = lost = unexpected = 0
        sent = iter(sent_per_flow) if sent_per_flow is not None else None
        for rcv, d, reo, _, _, _ in self._flow_tuples():
            received += rcv
            dup += d
            reordered += reo
            if sent is not None:
                miss = next(sent) - (rcv - d)
                if miss > 0:
                    lost += miss
                else:
                    unexpected -= miss
        out = {"received": received, "unique": received - dup, "duplicated": dup, "reordered": reordered}
        if sent_per_flow is not None:
            out.update(sent=sum(sent_per_flow), lost=lost, unexpected=unexpected)
        hist = self.histogram()
        mx = self.maps["sink_lat_max"].get(L.u32(0))
        p50, p99 = percentile(hist, 0.5), percentile(hist, 0.99)
        out.update(lat_p50_us=None if p50 is None else p50 / 1e3,
                   lat_p99_us=None if p99 is None else p99 / 1e3,
                   lat_max_us=max(mx) / 1e3 if mx is not None else None)
        st = self.stats()
        out.update(foreign=st.get("r_sink_foreign", 0), bad_flow=st.get("r_sink_bad_flow", 0),
                   aborted=st.get("v_aborted", 0))
        return out

    def reset(self) -> None:
        """Forget every flow's window, the histogram and the counters."""
        for name in ("sink_flows", "sink_lat", "sink_lat_max", "nfx_stats"):
            self.maps[name].clear()

    def close(self) -> None:
        if self._attached:
            attach.detach_xdp(self.ns, self.ifname, self._attached)
            self._attached = None
        if getattr(self, "bpf", None) is not None:
            self.bpf.cleanup()
            self.bpf = None
