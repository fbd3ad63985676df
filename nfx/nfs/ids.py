"""IDS: configuration, the run-time signature table, counters as people read them, and an alert
reader that works on the ids_alerts ringbuf from any process that can open the instance's pins."""
import ctypes as ct
import time
from dataclasses import dataclass, field

from .. import layout as L
from ..errors import BadInput, NotFound
from ..flows import be_to_ip, key_fields, proto_num
from ..loader.ring import RingReader, RingStandIn as _Ring
from ..loader.spec import MapSpec
from .base import NF, NF_MAPS


@dataclass
class Signature:
    id: int
    pattern: bytes
    offset: int = 0               # from the start of the L4 payload
    proto: int = 0                # 0 = any
    slot: int | None = None


@dataclass
class IdsConfig:
    scan_threshold: int = 20      # distinct destination ports from one source; 0 = no scan alerts
    signatures: list[Signature] = field(default_factory=list)
    # what the IDS cannot inspect (ARP, IPv6, fragments, non-echo ICMP, other protocols, VLAN):
    # forwarded by default, so a passive IDS breaks nothing; True drops it (counted either way)
    drop_uninspected: bool = False


@dataclass
class Alert:
    kind: str                     # "sig" or "scan"
    sig_id: int                   # signature id, or the distinct port count for a scan
    flow: dict                    # key_fields() of the packet that raised it
    ts_ns: int                    # CLOCK_MONOTONIC


def decode_alert(a: L.IdsAlert) -> Alert:
    kind = {L.AlertKind.SIG: "sig", L.AlertKind.SCAN: "scan"}.get(a.kind, str(a.kind))
    return Alert(kind, a.sig_id, key_fields(a.key), a.ts_ns)


def _decode_raw_alert(raw: bytes) -> Alert | None:
    if len(raw) < ct.sizeof(L.IdsAlert):
        return None
    return decode_alert(L.IdsAlert.from_buffer_copy(raw[:ct.sizeof(L.IdsAlert)]))


class AlertReader(RingReader):
    """Consumes alert records from a ringbuf map fd (ours or one opened from a pin). Each record
    is consumed once: a second reader on the same ring competes for records, it does not copy them.
    poll(timeout_ms) returns the Alerts that arrived, waiting up to timeout_ms for the first."""

    def __init__(self, map_fd: int):
        super().__init__(map_fd, _decode_raw_alert, what="alert")

    def follow(self, timeout_s: float | None = None, poll_ms: int = 200):
        """Yield alerts as they come; stop after timeout_s without one (None: never)."""
        last = time.monotonic()
        while True:
            got = self.poll(poll_ms)
            yield from got
            if got:
                last = time.monotonic()
            elif timeout_s is not None and time.monotonic() - last >= timeout_s:
                return


class IDS_MAPS(NF_MAPS):
    ids_flows = MapSpec(L.FlowKey, L.IdsFlow)
    ids_hosts = MapSpec(L.u32, L.IdsHost)
    ids_hostports = MapSpec(L.IdsHostPort, L.u8)   # seen-set; pad=1 keys are scan-alert tokens
    ids_global = MapSpec(L.u32, L.u64)
    ids_sigs = MapSpec(L.u32, L.IdsSig)
    ids_sig_hits = MapSpec(L.u32, L.u64)
    ids_cfg = MapSpec(L.u32, L.IdsCfg)
    ids_alerts = MapSpec(_Ring, _Ring, optional=True)   # ringbuf: read it with alerts(), not as a map


class IDS(NF):
    kind = "ids"
    MAPS = IDS_MAPS
    STATE_MAPS = ("ids_flows", "ids_hosts", "ids_hostports", "ids_global", "ids_sig_hits")
    FLOW_BYTES = ct.sizeof(L.FlowKey) + ct.sizeof(L.IdsFlow)

    def flow_count(self) -> int | None:
        """Entries of ids_flows (an LRU: nothing else counts them), read with one batch walk;
        the stats stream measures what that costs and reads it less often when it is dear."""
        return self.maps.ids_flows.export()[0]

    # ---- configuration ----
    def configure(self, config: IdsConfig | None) -> None:
        config = config or IdsConfig()
        if not 0 <= config.scan_threshold <= 0xFFFFFFFF:
            raise BadInput(f"bad scan threshold {config.scan_threshold}")
        self._put_cfg(scan_threshold=config.scan_threshold, drop_uninspected=config.drop_uninspected)
        for s in config.signatures:
            self.add_signature(s.id, s.pattern, s.offset, s.proto)

    def config(self) -> L.IdsCfg:
        return self.maps.ids_cfg.get(L.u32(0))

    def _put_cfg(self, scan_threshold: int | None = None, drop_uninspected: bool | None = None) -> None:
        c = self.config()
        if scan_threshold is not None:
            c.scan_threshold = scan_threshold
        if drop_uninspected is not None:
            c.drop_uninspected = int(bool(drop_uninspected))
        # the datapath skips matching (and its payload load) while nsigs is 0: keep it exact
        c.nsigs = sum(1 for _ in self._used_slots())
        self.maps.ids_cfg.put(L.u32(0), c)

    # ---- signatures ----
    def _used_slots(self):
        m = self.maps.ids_sigs
        for slot in range(L.IDS_MAX_SIGS):
            s = m.get(L.u32(slot))
            if s is not None and s.len:
                yield slot, s

    def add_signature(self, id: int, pattern: bytes, offset: int = 0, proto: int | str = 0) -> int:
        """Install (or replace, by id) a signature; returns its slot. Its hit counter starts at 0."""
        pattern = bytes(pattern)
        if not 1 <= len(pattern) <= L.IDS_SIG_LEN:
            raise BadInput(f"signature pattern must be 1..{L.IDS_SIG_LEN} bytes, got {len(pattern)}")
        if not 0 <= offset <= 0xFFFF or not 0 <= id <= 0xFFFFFFFF:
            raise BadInput(f"bad signature id {id} or offset {offset}")
        proto = proto_num(proto) if proto else 0
        used = dict(self._used_slots())
        slot = next((i for i, s in used.items() if s.id == id), None)
        if slot is None:
            slot = next((i for i in range(L.IDS_MAX_SIGS) if i not in used), None)
        if slot is None:
            raise BadInput(f"signature table full ({L.IDS_MAX_SIGS} slots)")
        s = L.IdsSig(id=id, offset=offset, len=0, proto=proto)
        ct.memmove(s.pattern, pattern, len(pattern))
        # the datapath reads a slot while we write it: disable first, write everything, then
        # enable with a write that changes only len, so no packet sees half a signature
        self.maps.ids_sigs.put(L.u32(slot), s)
        self.maps.ids_sig_hits.put(L.u32(slot), self.maps.ids_sig_hits.Slot())
        s.len = len(pattern)
        self.maps.ids_sigs.put(L.u32(slot), s)
        self._put_cfg()
        return slot

    def remove_signature(self, id: int) -> int:
        """Remove a signature by id; returns the slot it had."""
        for slot, s in self._used_slots():
            if s.id == id:
                self.maps.ids_sigs.put(L.u32(slot), L.IdsSig())
                self._put_cfg()
                return slot
        raise NotFound(f"no signature with id {id}")

    def signatures(self) -> list[Signature]:
        return [Signature(s.id, bytes(s.pattern[:s.len]), s.offset, s.proto, slot) for slot, s in self._used_slots()]

    def sig_hits(self) -> dict[int, int]:
        """Matches per installed signature id, summed over CPUs."""
        return {s.id: self.maps.ids_sig_hits.sum_percpu(L.u32(slot)) for slot, s in self._used_slots()}

    # ---- reading ----
    def flows(self) -> list[dict]:
        n, keys, vals = self.maps.ids_flows.export()
        out = []
        for i in range(n):
            v = vals[i]
            rec = key_fields(keys[i])
            rec.update(pkts=v.pkts, bytes=v.bytes, first_ns=v.first_ns, last_ns=v.last_ns,
                       sig_hits=v.sig_hits, tcp_flags=v.tcp_flags)
            out.append(rec)
        return out

    def hosts(self) -> list[dict]:
        n, keys, vals = self.maps.ids_hosts.export()
        out = []
        for i in range(n):
            v = vals[i]
            out.append({"addr": be_to_ip(keys[i]), "pkts": v.pkts, "bytes": v.bytes, "flows": v.flows,
                        "dports": v.dports, "alerts": v.alerts, "scan_alerted": bool(v.scan_alerted)})
        return out

    def global_counters(self) -> dict[str, int]:
        m = self.maps.ids_global
        return {g.name.lower(): m.sum_percpu(L.u32(g)) for g in L.IdsGlobal}

    # table -> the ids_global counter of entries the datapath created in it
    CREATED = {"ids_flows": L.IdsGlobal.FLOWS, "ids_hosts": L.IdsGlobal.HOSTS, "ids_hostports": L.IdsGlobal.PORTS}

    def evictions(self) -> dict[str, int]:
        """Entries the LRU tables gave up to newcomers, per table: created - present. The kernel
        does not report LRU evictions; entries moved in or out by state transfer skew the
        difference until reset()."""
        g = self.maps.ids_global
        return {t: max(0, g.sum_percpu(L.u32(i)) - len(self.maps[t])) for t, i in self.CREATED.items()}

    def reset(self) -> None:
        """Forget flows, hosts, port sets (so scan alerts can fire again) and counters; keep
        signatures and config."""
        for name in self.STATE_MAPS:
            self.maps[name].clear()

    def alerts(self) -> AlertReader:
        """A reader on this instance's alert ring (works on an instance reopened from its pins)."""
        m = self.maps.ids_alerts
        if m is None:
            raise NotFound(f"instance {self.instance!r} has no alert ring")
        return AlertReader(m.fd)
