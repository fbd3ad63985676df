"""The inspector's view model: what each instance's events add up to (rates, totals since the
watch began, the latest alerts, statelets and per-flow rows), and which events the flow filter
lets through. Fed from one thread; the view reads it."""
import time
from collections import deque

from ..state.statelets import BY_NAME
from .flows import FlowMatch, flow_bytes, flow_text

VERDICTS = ("v_tx", "v_redirect", "v_pass", "v_drop", "v_aborted")
# reasons whose packets the program drops (a parse failure, a gate or NAT refusal, a full ring)
DROPS = ("r_trunc_eth", "r_vlan", "r_arp", "r_ipv6", "r_non_ip", "r_trunc_ip", "r_bad_version", "r_bad_ihl",
         "r_fragment", "r_trunc_l4", "r_unsupp_proto", "r_icmp_not_echo", "r_no_port", "r_gate_drop",
         "r_gate_other", "r_redirect_fail", "r_nat_not_inside", "r_nat_no_mapping", "r_nat_ports_exhausted",
         "r_nat_map_full", "r_buf_ring_full", "r_hold_stale", "r_release_bad", "r_op_pre_ibc")
# dropped by XDP but kept: a move's buffer ring (released later) or the controller's
HELD = ("r_buffered", "r_to_ctrl")
# what the NF did besides forwarding (not drops)
NF_EVENTS = ("r_nat_new", "r_nat_expired", "r_ids_sig_match", "r_ids_scan_alert", "r_ids_ring_full",
             "r_ids_map_full", "r_ip_options", "r_empty_payload", "r_statelet_ring_full", "r_statelet_too_big",
             "r_release_wait", "r_hold_spilled")
# moves (nfx/gate.py, nfx/agent/sessions.py): the gate's buffer/redirect/controller paths
MOVES = ("r_buffered", "r_released", "r_redirected", "r_to_ctrl", "r_from_peer", "r_injected",
         "r_op_pre_ibc", "r_ibc")
HISTORY = 40


class Instance:
    def __init__(self, name: str, keep: int):
        self.name = name
        self.kind: str | None = None
        self.status = "connecting"
        self.error: str | None = None
        self.streams: list[str] = []
        self.unavailable: dict[str, str] = {}
        self.stream_errors: dict[str, str] = {}
        self.total: dict[str, int] = {}
        self.base: dict[str, int] | None = None       # totals when the watch began
        self.rates: dict[str, float] = {}
        self.pps = deque(maxlen=HISTORY)
        self.last_event: float | None = None
        self.events = 0
        self.alerts = deque(maxlen=keep)
        self.statelets = deque(maxlen=keep)
        self.seen = {"alerts": 0, "statelets": 0}
        self.hidden = {"alerts": 0, "statelets": 0}
        self.recv_rate = {"alerts": 0.0, "statelets": 0.0}    # events received per second
        self._seen_at_stats = dict(self.seen)
        self.flows: dict | None = None
        self.end: dict | None = None

    def rate(self, k: str) -> float:
        return self.rates.get(k, 0.0)

    def since(self, k: str) -> int:
        return self.total.get(k, 0) - (self.base or {}).get(k, 0)

    @property
    def verdict_pps(self) -> float:
        return sum(self.rate(v) for v in VERDICTS)

    @property
    def held_pps(self) -> float:
        return sum(self.rate(h) for h in HELD)

    @property
    def drop_pps(self) -> float:
        """Packets lost per second: drop verdicts less the ones a move holds."""
        return max(0.0, self.rate("v_drop") + self.rate("v_aborted") - self.held_pps)


class Model:
    def __init__(self, testbed: str, instances: list[str], match: FlowMatch, filter_text: str | None,
                 keep: int = 8):
        self.testbed = testbed
        self.instances = {n: Instance(n, keep) for n in instances}
        self.match = match
        self.filter_text = filter_text
        self.t0 = time.monotonic()
        self.events = 0
        self.loop: deque = deque(maxlen=2 * keep)     # the orchestration loop's latest decisions

    @property
    def watching_s(self) -> float:
        return time.monotonic() - self.t0

    def apply(self, ev: dict) -> bool:
        """Take one event in; False if the flow filter leaves it out (it is counted, not kept)."""
        if ev.get("stream") == "decisions":
            self.events += 1
            self.loop.append(ev)
            return True
        inst = self.instances[ev["instance"]]
        stream = ev.get("stream")
        self.events += 1
        inst.events += 1
        inst.last_event = time.monotonic()
        if "error" in ev and stream != "error":
            inst.stream_errors[stream] = ev["error"]   # a stream the agent had to end
            return True
        handler = getattr(self, "_" + str(stream), None)
        return handler(inst, ev) if handler else True

    # ---- one method per stream -------------------------------------------------------------------
    def _subscribed(self, inst: Instance, ev: dict) -> bool:
        inst.kind = ev.get("kind") or inst.kind
        inst.streams, inst.unavailable = ev.get("streams", []), ev.get("unavailable", {})
        inst.status, inst.error = "live", None
        return True

    def _error(self, inst: Instance, ev: dict) -> bool:
        inst.status, inst.error = "down", ev.get("error")
        inst.rates = {}
        return True

    def _end(self, inst: Instance, ev: dict) -> bool:
        inst.end = ev
        inst.status = "closed" if inst.status == "live" else inst.status
        return True

    def _stats(self, inst: Instance, ev: dict) -> bool:
        dt = ev.get("interval_s") or 0
        inst.total = ev.get("total", {})
        if inst.base is None:                    # the first interval's packets count as watched
            inst.base = {k: v - ev.get("delta", {}).get(k, 0) for k, v in inst.total.items()}
        inst.rates = {k: d / dt for k, d in ev.get("delta", {}).items()} if dt > 0 else {}
        inst.pps.append(inst.verdict_pps)
        if dt > 0:
            inst.recv_rate = {k: (n - inst._seen_at_stats[k]) / dt for k, n in inst.seen.items()}
        inst._seen_at_stats = dict(inst.seen)
        return True

    def _alerts(self, inst: Instance, ev: dict) -> bool:
        return self._keep(inst, "alerts", inst.alerts, ev, self.match.flow(ev["flow"]) if "flow" in ev else True)

    def _statelets(self, inst: Instance, ev: dict) -> bool:
        ok, text = self.statelet_flow(ev)
        return self._keep(inst, "statelets", inst.statelets, {**ev, "flow_text": text}, ok)

    def _flows(self, inst: Instance, ev: dict) -> bool:
        inst.flows = ev
        return True

    def _keep(self, inst: Instance, name: str, q: deque, ev: dict, ok: bool) -> bool:
        inst.seen[name] += 1
        if ok:
            q.append(ev)
        else:
            inst.hidden[name] += 1
        return ok

    # ---- statelets: which flow each one belongs to -------------------------------------------------
    def statelet_flow(self, d: dict) -> tuple[bool, str]:
        """(does the filter take it, the flow or host it is about, as text)."""
        m, t, key, fields = self.match, d.get("table"), d.get("key"), d.get("fields") or {}
        raw = bytes.fromhex(d.get("key_hex", ""))
        if t in ("nat_fwd", "ids_flows"):
            if "peer" in fields:
                m.learn(flow_bytes(fields["peer"]), raw)
            return m.key(raw), flow_text(key)
        if t in ("nat_rev", "nat_ports"):
            owner = fields.get("peer") or fields.get("value")       # the inside flow, on creation
            if owner:
                m.learn(raw, flow_bytes(owner))
            inside = m.inside_of(raw)
            text = flow_text(key) if t == "nat_rev" else f"{key['addr']}:{key['port']}"
            if owner:
                text += f" (of {owner['src']}:{owner['sport']})"
            # an entry whose creation we never saw cannot be tied to its connection: left out
            return m.everything or (inside is not None and m.key(inside)), text
        if t == "ids_hosts":
            return m.host(key), f"host {key}"
        if t == "ids_hostports":
            f, port = m.f, key["dport"]
            ok = m.host(key["addr"]) and (not f.proto or f.proto == key["proto"]) and \
                (f.dport[0] <= port <= f.dport[1] or f.sport[0] <= port <= f.sport[1])
            return m.everything or ok, f"host {key['addr']} port {port}"
        return m.everything, str(key)


def changed(d: dict) -> str:
    """A statelet's carried fields, short: counters with values, timestamps by name."""
    if d.get("op") == "del":
        return "deleted"
    s = BY_NAME.get(d.get("table"))
    parts = ["new"] if s is not None and d.get("mask") == s.full_mask and s.incarnation else []
    for k, v in (d.get("fields") or {}).items():
        if isinstance(v, dict):
            parts.append(f"{k}={v.get('dst')}:{v.get('dport')}" if k == "peer" else f"{k}=flow")
        elif k.endswith("_ns"):
            parts.append(k[:-3])
        else:
            parts.append(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}")
    return " ".join(parts)
