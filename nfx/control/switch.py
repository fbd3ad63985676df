"""The SDN switch (bpf/switch.bpf.c): a tc program on every port of a netns, driven by rules.

An exact 5-tuple entry or a wildcard slot points at a rule id; the rule says where the packet
goes. Rule ids index `sw_rules` and `sw_counters`; id 0 is never handed out. Wildcards live in
a small array whose slot order is their priority (lower `prio` first); `prio` is stored in the
slot too, so any process that reopens the pins can keep the order. Ports are interface names
in the switch's netns (or raw ifindexes). A rule armed with a token is passed over until a
trigger with that token (nfx/frames.py) has reached the switch on an NF-facing port.
Ports have roles (`set_port_role`): a port facing a host drops nfx's reserved marks (IBC and
trigger TOS) except the controller's IBC of the epoch set with `expect_ibc`; triggers count only
on ports facing an NF; a port with no role counts as facing a host.
SHarP's HSL messages (nfx/frames.py hsl_frame) from an NF port, and the controller's TEST of an
epoch announced with `expect_test` from a host port, reach the controller ring (CtrlPacket.hsl)
and go no further; any other HSL mark from a host port is dropped as forged. Every rule's
counter stamps its last hit (`last_hit_ns`), for idle timeouts.
A tagged rule (dup) gives the copy to its i-th port the source MAC layout.dup_tag(i); a frame
arriving with such a MAC is dropped as forged.
With the stamper on (`set_stamp`), a flow packet from a host port that goes to NF ports only
leaves with the flow's packet count (per direction) as an 8-byte trailer past its IPv4 datagram,
which the NF takes off before its logic runs (bpf/include/nfx_stamp.h).
A spread rule sends each flow to one of its `spread` ports, chosen per flow (nfx/control/spread.py);
its `output` ports, if any, get clones as usual. Rules and matches as Python values, and their
wire form, are nfx/control/switch_rules.py.

This file is the maps' one writer (Switch: load, attach and pin, and every write to the maps);
what reads them back (rules(), counters, last hits, fired tokens, roles, stats) is
switch_read.py's SwitchRead, which Switch inherits. One controller at a time is assumed:
rule-id allocation and slot rewrites are not atomic against a second writer."""
import os
import socket
import threading
from pathlib import Path

from .. import layout as L
from ..errors import AlreadyExists, BadInput, BpfError, NotFound
from ..loader import attach, bpfsys, pin
from ..loader.compile import compile_source, load
from ..loader.spec import MapSet, MapSpec
from .spread import encode as encode_spread, write_group
from .switch_read import SwitchRead
from .switch_ring import Port
from .switch_rules import Match, Rule, RuleInfo, _prefix, _proto, flow_key  # noqa: F401 (RuleInfo: importable here)

class SWITCH_MAPS(MapSet):
    """The switch program's maps (bpf/switch.bpf.c); its scratch map is its own business."""
    sw_exact = MapSpec(L.FlowKey, L.u32)
    sw_wild = MapSpec(L.u32, L.SwWild)
    sw_rules = MapSpec(L.u32, L.SwRule)
    sw_counters = MapSpec(L.u32, L.SwCounter)
    sw_fired = MapSpec(L.u64, L.u64)
    sw_ports = MapSpec(L.u32, L.u32)
    sw_cfg = MapSpec(L.u32, L.SwCfg)
    sw_hsl_epochs = MapSpec(L.u32, L.u32)
    sw_reasons = MapSpec(L.u32, L.u64)
    sw_stamps = MapSpec(L.FlowKey, L.u64)
    sw_spread = MapSpec(L.u32, L.SwSpread)
    sw_spread_hits = MapSpec(L.u32, L.u64)
    nfx_stats = MapSpec(L.u32, L.u64)


RING = "sw_ctrl"
PROG = "prog"             # the tc program's pin: a port added later (a join's trunk) gets it
_CFG_LOCK = threading.Lock()        # sw_cfg's read-modify-write, within this process


class _Pinned:
    """A pinned program, as attach_tc takes one (its fd and name)."""

    def __init__(self, fd: int, name: str):
        self.fd, self.name = fd, name


class Switch(SwitchRead):
    """The switch's maps' one writer: loads, attaches and pins the program, and writes every rule,
    slot, entry, role, setting and token; what it reads back is SwitchRead's (switch_read.py)."""

    def __init__(self, name: str, ns: str | None, pin_dir: Path | None, maps: SWITCH_MAPS,
                 ring_fd: int, bpf=None, fn=None, ports: list[str] | None = None):
        self.name = name
        self.ns = ns
        self.pin_dir = pin_dir
        self.maps = maps
        self.ring_fd = ring_fd
        self.bpf = bpf          # only in the process that compiled it
        self.fn = fn
        self.ports = ports or []
        self._names: dict[int, str] = {}
        self._stub = None       # (BPF object, XDP stub program) while this process holds them

    # ---- lifecycle ----
    @classmethod
    def load(cls, name: str = "switch", ns: str | None = None, defines: dict | None = None) -> "Switch":
        """Compile and load, attached nowhere and not pinned (BPF_PROG_TEST_RUN uses this)."""
        b = compile_source("switch", defines)
        fn = load(b, "nfx_switch", "tc")
        return cls(name, ns, None, SWITCH_MAPS.from_bcc(b), b[RING].map_fd, bpf=b, fn=fn)

    @classmethod
    def create(cls, name: str, ns: str, ports: list[str], pin_dir: Path,
               defines: dict | None = None, stub=None) -> "Switch":
        """Load, attach the tc program on ingress of every port plus the XDP stub (so native
        XDP redirects from veth peers are received), pin the maps. On failure, undo it all.
        `stub`: an XDP_PASS program already loaded (a testbed's, compiled once for all its
        hosts and switches: a compile costs about a second); else one is compiled here."""
        if (pin_dir / "sw_rules").exists():
            raise AlreadyExists(f"switch {name!r} already runs (pins at {pin_dir})")
        self = cls.load(name, ns, defines)
        self.ports = list(ports)
        if stub is None:
            stub_b = compile_source("stub")
            stub = load(stub_b, "nfx_stub", "xdp")
            self._stub = (stub_b, stub)        # keep the program alive while attached
        done_tc, done_xdp = [], []
        try:
            for p in ports:
                attach.attach_tc(ns, p, self.fn, "ingress")
                done_tc.append(p)
                done_xdp.append((p, attach.attach_xdp(ns, p, stub)))
            pin.pin_maps(self.bpf, pin_dir, skip=("sw_scratch",))
            pin.pin_prog(self.fn.fd, pin_dir / PROG)
            self.pin_dir = pin_dir
        except BaseException:
            for p in done_tc:
                attach.detach_tc(ns, p)
            for p, mode in done_xdp:
                attach.detach_xdp(ns, p, mode)
            pin.unpin(pin_dir)
            raise
        return self

    @classmethod
    def open(cls, name: str, ns: str | None, pin_dir: Path) -> "Switch":
        """Reopen a running switch from its pins (any process)."""
        if not (pin_dir / "sw_rules").exists():
            raise NotFound(f"switch {name!r} is not running (no pins at {pin_dir})")
        return cls(name, ns, pin_dir, SWITCH_MAPS.open_pinned(pin_dir), bpfsys.obj_get(str(pin_dir / RING)))

    def add_trunk(self, port: str) -> None:
        """A port made after the build (nfx testbed join's tunnel to the joined site's switch of
        the same name): the pinned program on its ingress, and the trunk role. Its removal is the
        interface's (the filter and the role's ifindex go with it: forget_port)."""
        self.attach_pinned(port)
        self.set_port_role(port, "trunk")

    def attach_pinned(self, port: str) -> None:
        """The switch's pinned program on the ingress of a port made after the build."""
        if self.pin_dir is None or not (self.pin_dir / PROG).exists():
            raise NotFound(f"switch {self.name!r} has no pinned program (built by an older nfx)", hint="rebuild the testbed")
        fd = bpfsys.obj_get(str(self.pin_dir / PROG))
        try:
            attach.attach_tc(self.ns, port, _Pinned(fd, "nfx_switch"), "ingress")
        finally:
            os.close(fd)

    def forget_port(self, ifindex: int) -> None:
        """A removed port's role (its ifindex could be some later interface's)."""
        self.maps.sw_ports.delete(L.u32(ifindex))

    @staticmethod
    def destroy(ns: str, ports: list[str], pin_dir: Path) -> None:
        for p in ports:
            attach.detach_tc(ns, p)      # drops the clsact qdisc and our filter with it
            attach.detach_xdp(ns, p, "native")
            attach.detach_xdp(ns, p, "generic")   # in case create fell back to it
        pin.unpin(pin_dir)

    # ---- ports ----
    def set_port_role(self, port: Port, role: str) -> None:
        """'host' (reserved marks dropped), 'nf' (triggers taken) or 'trunk' (an NF port that
        takes dup-tagged frames) for one port."""
        if role not in self.ROLES:
            raise BadInput(f"unknown port role {role!r}: one of {', '.join(self.ROLES)}")
        self.maps.sw_ports.put(L.u32(self.ifindex(port)), L.u32(self.ROLES[role]))

    def _set_cfg(self, **fields) -> None:
        # sw_cfg is one value: a read-modify-write keeps the other fields (the program only reads it)
        with _CFG_LOCK:
            c = self._cfg()
            for k, v in fields.items():
                setattr(c, k, v)
            self.maps.sw_cfg.put(L.u32(0), c)

    def expect_ibc(self, epoch: int) -> None:
        """The controller is about to send an IBC of `epoch` into a host-facing port (0: none)."""
        self._set_cfg(ibc_epoch=epoch)

    # ---- the stamper ----
    def set_stamp(self, on: bool) -> None:
        """The stamper on or off: a flow packet from a host port to NF ports only leaves with the
        flow's packet count as a trailer past its IPv4 datagram (struct nfx_stamp, nfx_flow.h),
        which the NF takes off (bpf/include/nfx_stamp.h)."""
        self._set_cfg(stamp=1 if on else 0)

    # ---- SHarP's test packets ----
    def expect_test(self, epoch: int) -> None:
        """The controller is about to inject the TEST message of handover `epoch` on a host port."""
        if not 0 < epoch < 1 << 32:
            raise BadInput(f"HSL epoch {epoch} is not a nonzero 32-bit value")
        try:
            self.maps.sw_hsl_epochs.put(L.u32(epoch), L.u32(1))
        except BpfError as e:
            raise BadInput(f"switch {self.name}: cannot expect test {epoch} ({e}): at most "
                           f"{L.HSL_EPOCHS} at once, forget_test the finished ones") from None

    def forget_test(self, epoch: int) -> None:
        """The test of `epoch` arrived or was given up: a host sending it again is forged."""
        self.maps.sw_hsl_epochs.delete(L.u32(epoch))

    # ---- rules ----
    def _encode(self, rule: Rule) -> L.SwRule:
        r = L.SwRule(used=1)
        if rule.set_tos is not None and rule.clear_tos:
            raise BadInput("a rule cannot both set and clear the TOS")
        # a spread rule's pick takes ports[0]'s place (the group's first stands in for it)
        ports = rule.spread[:1] + rule.output
        if len(ports) > L.SW_MAX_PORTS:
            raise BadInput(f"at most {L.SW_MAX_PORTS} output ports per rule (a spread counts as one)")
        if ports:
            r.actions |= L.SW_OUTPUT
            r.nports = len(ports)
            for i, p in enumerate(ports):
                r.ports[i] = self.ifindex(p)
        if rule.spread:
            rule.spread_by.check(len(rule.spread))
            r.actions |= L.SW_SPREAD
        if rule.set_tos is not None:
            if not 0 <= rule.set_tos <= 255:
                raise BadInput(f"TOS {rule.set_tos} is not a byte")
            r.actions |= L.SW_SET_TOS
            r.tos = rule.set_tos
        if rule.clear_tos:
            r.actions |= L.SW_CLEAR_TOS
        if rule.to_ctrl:
            r.actions |= L.SW_TO_CTRL
        if rule.drop:
            r.actions |= L.SW_DROP
        if rule.tagged:
            if rule.spread:
                raise BadInput("a spread rule cannot be tagged: tags name a move's two instances")
            if len(rule.output) < 2:
                raise BadInput("a tagged rule duplicates: it needs two output ports or more")
            r.actions |= L.SW_TAG
        if not 0 <= rule.token < 1 << 64:
            raise BadInput(f"token {rule.token} is not a 64-bit value")
        r.token = rule.token
        return r

    def _write_spread(self, rid: int, rule: Rule) -> None:
        if rule.spread:
            write_group(self.maps, rid, encode_spread(rule.spread_by, [self.ifindex(p) for p in rule.spread]))

    # rule ids from here up are shared by many exact entries (SHarP's per-flow entries: one rule
    # per handover and step, pointed at by every flow it learnt); below, an exact rule has one key
    SHARED_RULES = L.SW_MAX_RULES - 256

    def _new_rule(self, rule: Rule, shared: bool = False) -> int:
        """Write the rule and zero its counters before anything points at it."""
        enc = self._encode(rule)
        ids = range(self.SHARED_RULES, L.SW_MAX_RULES) if shared else range(1, self.SHARED_RULES)
        rid = self._free_rule_id(ids)
        if rid is None:
            raise BadInput(f"switch {self.name}: all {len(ids)} {'shared ' if shared else ''}rule ids are in use")
        cm = self.maps.sw_counters
        cm.put(L.u32(rid), cm.Slot())
        self._write_spread(rid, rule)
        self.maps.sw_rules.put(L.u32(rid), enc)
        return rid

    def add_exact(self, key: L.FlowKey | tuple, rule: Rule) -> int:
        """key: a FlowKey (network order) or (src, dst, sport, dport, proto) in host order.
        A key that already has a rule is repointed in one update, and its old rule id freed."""
        k = key if isinstance(key, L.FlowKey) else flow_key(*key)
        ex = self.maps.sw_exact
        prev = ex.get(k)
        rid = self._new_rule(rule)
        try:
            ex.put(k, L.u32(rid))
        except BpfError:
            self.maps.sw_rules.put(L.u32(rid), L.SwRule())
            raise
        if prev is not None and prev.value < self.SHARED_RULES:   # its only key moved on: free
            self.maps.sw_rules.put(L.u32(prev.value), L.SwRule())
        return rid

    def shared_rule(self, rule: Rule) -> int:
        """A rule for many exact entries (point_exact), pointed at by none yet."""
        return self._new_rule(rule, shared=True)

    def set_rule(self, rule_id: int, rule: Rule) -> None:
        """Change what a rule does, in one update: every entry pointing at it follows at once."""
        if self.maps.sw_rules.get(L.u32(rule_id)) is None:
            raise NotFound(f"switch {self.name}: no rule {rule_id}")
        enc = self._encode(rule)
        self._write_spread(rule_id, rule)
        self.maps.sw_rules.put(L.u32(rule_id), enc)

    def point_exact(self, keys: list[L.FlowKey], rule_id: int) -> None:
        """These flows' exact entries point at shared rule `rule_id` (one batch update)."""
        if not keys:
            return
        if not self.SHARED_RULES <= rule_id < L.SW_MAX_RULES:
            raise BadInput(f"rule {rule_id} is not a shared rule")
        n = len(keys)
        ka = (L.FlowKey * n)(*keys)
        va = (L.u32 * n)(*([rule_id] * n))
        self.maps.sw_exact.update_batch(ka, va, n)

    def unpoint_exact(self, keys: list[L.FlowKey]) -> None:
        """Remove these flows' exact entries (those not there are skipped)."""
        for k in keys:
            self.maps.sw_exact.delete(k)

    def _write_wild(self, old: list[L.SwWild], new: list[L.SwWild]) -> None:
        """Rewrite the slots so a running packet never misses an entry that is in both lists:
        growing, write from the end (an entry is briefly in two slots); shrinking, from the start."""
        m = self.maps.sw_wild
        order = range(len(new) - 1, -1, -1) if len(new) >= len(old) else range(len(new))
        for i in order:
            if i >= len(old) or bytes(old[i]) != bytes(new[i]):
                m.put(L.u32(i), new[i])
        for i in range(len(new), len(old)):
            m.put(L.u32(i), L.SwWild())

    def add_wild(self, match: Match, rule: Rule, prio: int = 100) -> int:
        """Lower prio is matched first; equal prio keeps insertion order."""
        if not 0 <= prio <= 0xFFFF:
            raise BadInput("prio must be 0..65535")
        old = self._wild_list()
        if len(old) >= L.SW_MAX_WILD:
            raise BadInput(f"switch {self.name}: all {L.SW_MAX_WILD} wildcard slots are in use")
        w = L.SwWild(used=1, prio=prio, in_port=self.ifindex(match.in_port) if match.in_port else 0,
                     sport=socket.htons(match.sport), dport=socket.htons(match.dport), proto=_proto(match.proto))
        w.saddr, w.smask = _prefix(match.src)
        w.daddr, w.dmask = _prefix(match.dst)
        w.rule = self._new_rule(rule)
        pos = next((i for i, o in enumerate(old) if o.prio > prio), len(old))
        self._write_wild(old, old[:pos] + [w] + old[pos:])
        return w.rule

    def remove(self, rule_id: int) -> None:
        """Unhook the rule (wildcard slot and exact entries), then free its id."""
        self._rule_in_use(rule_id)
        self._unhook(rule_id)
        self.maps.sw_rules.put(L.u32(rule_id), L.SwRule())

    def _unhook(self, rule_id: int) -> None:
        old = self._wild_list()
        new = [w for w in old if w.rule != rule_id]
        if len(new) != len(old):
            self._write_wild(old, new)
        ex = self.maps.sw_exact
        n, keys, vals = ex.export()
        for i in range(n):
            if vals[i] == rule_id:
                ex.delete(keys[i])

    # ---- armed rules ----
    def forget_token(self, token: int) -> None:
        """Drop a token once no rule is armed with it (the table is small)."""
        self.maps.sw_fired.delete(L.u64(token))

    def forget_unused_tokens(self) -> int:
        """Drop the fired tokens no rule is armed with (a controller that died mid-move leaves
        them); returns how many. For a new controller, before any move of its own."""
        armed = {r.token for r in self._used_rules().values() if r.token}
        n, keys, _ = self.maps.sw_fired.export()
        stale = [keys[i] for i in range(n) if keys[i] not in armed]
        for t in stale:
            self.forget_token(t)
        return len(stale)

    def close(self) -> None:
        self.maps.close()
        if self.bpf is None and self.ring_fd >= 0:    # ours from obj_get, not BCC's
            os.close(self.ring_fd)
            self.ring_fd = -1
