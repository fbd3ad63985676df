"""One instance's part in a move, run by its agent (the agent side every mechanism shares):
roles, marks and filters, the buffer ring consumer, and draining without overtaking.

Roles: a *source* passes the moved flows on (REDIRECT to the destination's peer slot, DiST; or
TO_CTRL toward the controller, OpenNF), or keeps processing them and mirrors what they do to the
state as statelets until its cut (STATELET, SLiM: nfx/agent/slim_source.py). A *destination* buffers them (BUFFER, epoch E) until
their state is in, then drains. Order preservation (op) follows DiST's IBC cut per side: at the
destination, switch-path packets before the switch's IBC are dropped by the gate (the source has
them) and so are peer-path packets after the source's IBC (the switch path has them); the
drain releases everything that came from the source before switch-path packets.

dup (nfx/migrate/dup.py): the switches duplicate the flows, tagging each copy (layout.dup_tag).
A *src-dup* source holds its tagged copies (DUP_HOLD) until its snapshot is out, then releases
them; its cut is the switch's IBC on both sides (every untagged packet is processed). Its
destination (role dst, `dup`) buffers its copies like any destination and processes them in
shadow (output dropped, bpf/include/nfx_nf.h) once drained; after the repoint the switch's
untagged IBC on both sides (`final_cut`) says its last copy has arrived.

An instance whose held packets go in arrival order (SLiM's destination, dup's source and
destination: one path in, no early release) may hold them in the gate itself (`in_gate`,
bpf/include/nfx_hold.h): the release path replays them from the gate's FIFO and none passes
through this process; the ring then carries only IBCs. A dup op destination's own packets wait
there too, and the release path stops at the first of them until release_own()."""
import logging
import threading
import time
from collections import deque

from .. import layout as L
from ..errors import NfxError
from ..frames import CTRL_TAG_MAC
from ..gate import Gate, Releaser, key_array
from ..filter import Filter
from . import pauses
from .prio import enter_rt, leave_rt
from .settle import SETTLE_S, settle

log = logging.getLogger("nfx.move")
FILTER_SLOT = 0
POLL_IN_GATE_MS = 1  # a destination holding in the gate looks for a drain request this often
# what each role's marks and filter do to the flows, and the roles that hold packets back
ACTIONS = {"dst": L.Action.BUFFER, "src-redirect": L.Action.REDIRECT, "src-ctrl": L.Action.TO_CTRL,
           "src-dup": L.Action.DUP_HOLD, "src-slim": L.Action.STATELET}
ROLES = tuple(ACTIONS)
HOLDERS = ("dst", "src-dup")
HOLDING = (L.Action.BUFFER, L.Action.DUP_HOLD)


class MoveSession:
    def __init__(self, nf, ns: str, release_if: str, epoch: int, role: str, op: bool = False,
                 on_ctrl=None, egress: tuple[str, ...] = ()):
        """role: 'src-redirect', 'src-ctrl', 'src-dup' or 'dst'. on_ctrl(packets) receives what a
        'src-ctrl' source hands toward the controller (data packets and IBC records)."""
        if role not in ROLES:
            raise ValueError(role)
        self.nf, self.ns, self.epoch, self.role, self.op = nf, ns, epoch, role, op
        self.release_if, self.egress = release_if, tuple(egress)
        self.on_ctrl = on_ctrl
        self.gate = Gate(nf)
        self.releaser = Releaser(nf, ns, release_if, self.egress) if role in HOLDERS else None
        self.ring = self.gate.ring()
        self.lock = threading.Lock()
        self.peer_q: deque = deque()       # from the source (peer link), arrival order
        self.switch_q: deque = deque()     # from the switch, arrival order
        self.ibc_peer = [False, False]     # by side: the source's IBC has arrived
        self.ibc_switch = [False, False]
        self.ibc_final = [False, False]    # dup's destination: by side, the untagged IBC after the repoint
        self.dup = False                   # a dup move's destination (shadow); set before begin()
        self.hold_own = False              # ... op: its own packets wait for release_own(); set before begin()
        self.er = False                    # early release (dist's er option); set before begin()
        self.in_gate = False               # held packets wait in the gate's FIFO; set before begin()
        # op whose state is in before the switches cut (dist): drain as the source's cut arrives,
        # not a controller's round trip later (what a held packet would wait for); before begin()
        self.drain_on_cut = False
        self._hold0 = None                 # the FIFO's head when this move began
        self._ring_held = self._ring_own = 0   # in_gate: what spilled to the ring (own: dup op's)
        self.draining = False
        self.stats = {"buffered": 0, "released": 0, "to_ctrl": 0, "buffer_peak": 0, "ibc": 0, "stale": 0}
        self.early_keys: set[bytes] = set()
        self.rlock = threading.Lock()      # taking from the queues and releasing is one step
        self._stop = threading.Event()
        self._thread = None
        self.first_rx_ns = self.last_rx_ns = 0
        self.error: BaseException | None = None
        # SHarP's destination (nfx/agent/hsl.py): the controller's tagged packets (ctrl_buff) go
        # where a source's redirected ones go otherwise, first; the switch's (sw_buff) after
        self.sharp = False
        self._drain_when_read = False

    # ---- set up ----
    def begin(self, keys: list, flt: Filter | None, peer_slot: int = 0) -> None:
        """Mark the flows (existing keys) and catch new ones with a wildcard filter."""
        if self.in_gate and (self.role not in HOLDERS or self.sharp or self.er):
            raise ValueError("only an instance that releases in arrival order holds in the gate")
        self._hold0 = self.gate.hold_state().head if self.in_gate else None
        if self.role == "dst":
            dup = (L.DUP_SHADOW | (L.DUP_HOLD_OWN if self.hold_own else 0)) if self.dup else 0
            self.gate.set_move_cfg(epoch=self.epoch, op=int(self.op), dup=dup, hold=int(self.in_gate))
        elif self.role == "src-dup":
            # its switch IBC counts (the cut before the snapshot)
            self.gate.set_move_cfg(epoch=self.epoch, dup=L.DUP_SOURCE, hold=int(self.in_gate))
        elif self.role == "src-slim" and self.op:
            # the switch's IBC of this epoch counts here: it is the source's cut (nfx_ibc)
            self.gate.set_move_cfg(epoch=self.epoch, op=1)
        action = ACTIONS[self.role]
        self.start()
        self.gate.mark(keys, action, epoch=self.epoch, peer=peer_slot)
        if flt is not None:
            self.gate.set_filter(FILTER_SLOT, flt, action, peer=peer_slot, tag=self.epoch)

    def hold_new(self, flt: Filter, peer_slot: int = 0) -> None:
        """Catch flows with no mark (new ones) with the wildcard filter, for this role."""
        self.gate.set_filter(FILTER_SLOT, flt, ACTIONS[self.role], peer=peer_slot, tag=self.epoch)

    def mark(self, keys: list, peer_slot: int = 0) -> None:
        """Late locking: mark more flows as their state goes out."""
        self.gate.mark(keys, ACTIONS[self.role], epoch=self.epoch, peer=peer_slot)

    def start(self) -> None:
        if not self._thread:
            pauses.enter()                # the collector stays off until the consumer stops
            self._thread = threading.Thread(target=self._consume, daemon=True, name=f"move-{self.epoch}")
            self._thread.start()

    # ---- the ring ----
    def _consume(self) -> None:
        rt = False
        try:
            while not self._stop.is_set():
                asked = self._drain_when_read
                # holding in the gate's FIFO the ring has only IBCs (and what spilled): no record
                # says a drain was asked, so it is waited on 1 ms at most (5 ms, and every held
                # packet waited up to 5 ms longer), and not at all once draining
                gate_drain = self.in_gate and self.draining
                pkts = self.ring.poll(0 if gate_drain else POLL_IN_GATE_MS if self.in_gate else 5)
                if pkts:
                    self._take(pkts)
                    if self.drain_on_cut and not self.draining and self.cut_complete():
                        self.drain()
                if asked:
                    # this read began after drain_when_read(): it took every record committed
                    # before the call (libbpf consumes up to where the producer is)
                    self._drain_when_read = False
                    self.drain()
                if self.draining:
                    if not rt:
                        # releasing is the move's critical window: at normal priority, on CPUs
                        # the traffic keeps busy, the release fell behind the arrivals it must
                        # pass first and held them for seconds (the ramp at this machine's peak)
                        rt = enter_rt()
                    if not self._release_ready() and gate_drain:
                        time.sleep(0.0002)
                elif self.early_keys:
                    self._early_ready()
        except BaseException as e:
            # said by settled(): the move fails at once, with the reason, not by a timeout
            self.error = e
            log.exception("move %d: the ring consumer failed", self.epoch)
        finally:
            if rt:
                leave_rt()
            pauses.leave()

    def _take(self, pkts: list) -> None:
        ctrl = []
        with self.lock:
            now = time.monotonic_ns()
            for p in pkts:
                if p.epoch and p.epoch != self.epoch and (p.kind != L.BufKind.IBC or self.role == "dst"):
                    # an earlier move's: buffered after its session read the ring for the last
                    # time, or left by an agent that died mid-move. Released now it would be out
                    # of place and counted against this move's marks (released > buffered). (A
                    # source's IBC records carry no epoch of its own: the destination sets it.)
                    self.stats["stale"] += 1
                    continue
                if p.kind == L.BufKind.IBC:
                    self.stats["ibc"] += 1
                    if self.role == "src-ctrl":
                        ctrl.append(p)         # the controller needs the source's cut too
                    elif self.dup and not p.rx & (L.RX_PEER | L.RX_INJECTED | L.RX_DUP_DST):
                        self.ibc_final[p.side] = True
                    elif p.rx & (L.RX_PEER | L.RX_INJECTED):
                        self.ibc_peer[p.side] = True
                    else:
                        self.ibc_switch[p.side] = True
                    continue
                if p.kind == L.BufKind.TO_CTRL:
                    self.stats["to_ctrl"] += 1
                    ctrl.append(p)
                    continue
                self.first_rx_ns = self.first_rx_ns or now
                self.last_rx_ns = now
                first = p.data[6:12] == CTRL_TAG_MAC if self.sharp else p.rx & L.RX_PEER
                (self.peer_q if first else self.switch_q).append(p)
                self.stats["buffered"] += 1
                self._ring_held += 1
                if self.dup and not p.rx & L.RX_DUP_DST:
                    self._ring_own += 1
                    self.stats["own_buffered"] = self.stats.get("own_buffered", 0) + 1   # op: held after the repoint
            depth = len(self.peer_q) + len(self.switch_q)
            self.stats["buffer_peak"] = max(self.stats["buffer_peak"], depth)
            if self.sharp:
                self.stats["ctrl_buff_peak"] = max(self.stats.get("ctrl_buff_peak", 0), len(self.peer_q))
                self.stats["sw_buff_peak"] = max(self.stats.get("sw_buff_peak", 0), len(self.switch_q))
        if ctrl and self.on_ctrl:
            self.on_ctrl(ctrl)

    def drain_when_read(self) -> None:
        """drain() after the ring's next read: everything that reached the gate before this call
        is then in the queues, so the first release already has it all, in order."""
        self._drain_when_read = True

    def cut_complete(self) -> bool:
        """op: both sides' IBCs from the source are in (everything the source had is here).
        dup's source: the switch's IBC on both sides (every untagged packet is processed)."""
        if self.role == "src-dup":
            return all(self.ibc_switch)
        return all(self.ibc_peer)

    def final_cut(self) -> bool:
        """dup's destination: the untagged IBC on both sides (its last tagged copy is in)."""
        return all(self.ibc_final)

    # ---- drain ----
    def drain(self, keys: list | None = None, here: bool = False) -> None:
        """State is in (and, for op, the source's cut has arrived): release what is held, peer
        path first, and keep releasing new arrivals until the gate has flipped every flow.
        With `keys` (early release), only those flows now; the rest wait for a later call.
        `here`: what is held now goes from the calling thread before this returns (a caller
        with nothing else to do: SLiM's destination); else the ring's consumer is woken."""
        if keys is None:
            # a full drain comes after the source's cut (op), wherever that cut arrived
            self.gate.set_move_cfg(drain_epoch=self.epoch, peer_cut=1)
            self.draining = True
            if here or not (self._thread and self._thread.is_alive()):
                self._release_ready()
            if self._thread and self._thread.is_alive() and threading.current_thread() is not self._thread:
                # the consumer may be waiting on the ring: up to 1 ms, then its wake-up. Until
                # then, up to 4.9 ms of SLiM's destination's longest holds (40 moves, timed)
                self.ring.wake()
            # the consumer releases the rest, at real-time priority: released on a request's
            # thread at normal priority, a backlog fell behind 100k pps of arrivals and every
            # packet went through the buffer for seconds (250k of them in one move)
            return
        self._early(keys)

    def _early(self, keys) -> None:
        keys = key_array(keys)
        kb = bytes(keys)
        raw = {kb[i:i + 16] for i in range(0, len(kb), 16)}
        self.gate.drain(keys)
        with self.rlock, self.lock:
            self.early_keys |= raw
        self._early_ready()

    def _early_ready(self) -> None:
        # op: the switch path's packets of an early-released flow still wait for the source's cut
        switch_too = not self.op or self.cut_complete()
        with self.rlock:
            with self.lock:
                take = [p for p in self.peer_q if p.key in self.early_keys]
                self.peer_q = deque(p for p in self.peer_q if p.key not in self.early_keys)
                if switch_too:
                    take += [p for p in self.switch_q if p.key in self.early_keys]
                    self.switch_q = deque(p for p in self.switch_q if p.key not in self.early_keys)
            self._release(take)

    def _release(self, batch: list) -> int:
        if not batch:
            return 0
        self.releaser.release(batch)
        self._ring_stats()
        now = time.monotonic_ns()
        self.stats["released"] += len(batch)
        # how long the oldest of them was held back: the delay this move added
        self.stats["max_hold_us"] = max(self.stats.get("max_hold_us", 0), (now - min(p.ts_ns for p in batch)) / 1e3)
        return len(batch)

    def _release_held(self) -> tuple[int, bool]:
        """in_gate: replay what waits in the gate's FIFO; the figures come from the gate (and
        the ring, for what spilled). Returns (slots taken, whether the FIFO is now empty and
        the gate spilled: what waits in the ring goes next)."""
        with self.rlock:
            n = self.releaser.release_held()
            if n:
                self._ring_stats()
                self.stats["released"] += n
            hs = self.gate.hold_state()
            self.stats["buffered"] = ((hs.head - self._hold0) & 0xFFFFFFFF) + self._ring_held
            mine = hs.epoch == self.epoch
            if mine:
                self.stats["buffer_peak"] = max(self.stats["buffer_peak"], hs.peak)
                self.stats["max_hold_us"] = max(self.stats.get("max_hold_us", 0), hs.max_wait_ns / 1e3)
                if hs.spilled:
                    self.stats["spilled"] = hs.spilled
                if self.dup:
                    self.stats["own_buffered"] = hs.untagged + self._ring_own    # op: held after the repoint
            return n, mine and bool(hs.spilled) and hs.head == hs.cursor

    def _release_ready(self) -> int:
        """Release what may go now; returns how many went."""
        n = 0
        if self.in_gate:
            n, spilled = self._release_held()
            if not spilled:
                return n
            # the FIFO filled and is empty now: the rest of the move went to the ring, and goes
            # as any ring's does (the gate keeps spilling this epoch, so nothing comes after)
            self.gate.set_move_cfg(hold=0)
            self.in_gate = False
            log.info("move %d: the gate's FIFO filled (%d spilled to the ring)", self.epoch, self.stats["spilled"])
        with self.rlock:
            with self.lock:
                if self.hold_own:
                    # dup op: only its copies go (in shadow); its own packets (each flow's come
                    # after all its copies: one switch port's FIFO) wait for release_own()
                    batch = [p for p in self.switch_q if p.rx & L.RX_DUP_DST]
                    self.switch_q = deque(p for p in self.switch_q if not p.rx & L.RX_DUP_DST)
                    batch = list(self.peer_q) + batch
                    self.peer_q.clear()
                else:
                    batch = list(self.peer_q) + list(self.switch_q)
                    self.peer_q.clear()
                    self.switch_q.clear()
            return n + self._release(batch)

    def release_own(self) -> None:
        """dup op: the source's last output has left: this destination's own packets may go."""
        self.gate.set_move_cfg(dup=L.DUP_SHADOW)       # the gate first: nothing more is held for it
        with self.rlock:
            self.hold_own = False
        self._release_ready()

    def egress_fill(self) -> int:
        """Frames this instance has put into its next hops' rings and they have not taken yet."""
        return max((r.fill() for r in self.releaser.rings), default=0) if self.releaser else 0

    def inject(self, pkts: list) -> int:
        """Packets from the controller's buffer (OpenNF): processed here at once, as they are."""
        data = [p for p in pkts if p.kind != L.BufKind.IBC]
        if data:
            if self.releaser is None:      # a source takes its packets back when a move is called off
                self.releaser = Releaser(self.nf, self.ns, self.release_if, self.egress)
            self.releaser.release(data, rx=L.RX_INJECTED)
            self._ring_stats()
        return len(data)

    def _ring_stats(self) -> None:
        # how often a release waited for the next hop's ring to drain (Releaser), and how long
        self.stats["ring_waits"] = self.releaser.ring_waits
        self.stats["ring_wait_ms"] = round(self.releaser.ring_wait_s * 1e3, 3)

    def settled(self) -> bool:
        """Everything buffered has been released and has left: each marked flow either processes
        again or will on its next packet (a flow with no traffic never flips, and need not)."""
        if self.error is not None:
            raise NfxError(f"the destination's ring consumer failed: {self.error!r}")
        with self.lock:
            if self.peer_q or self.switch_q:
                return False
        if self.in_gate:
            hs = self.gate.hold_state()
            if hs.head != hs.cursor:
                return False
        flushed = self.gate.move_cfg().flushed_seq
        return all(m.action not in HOLDING or (m.buffered == m.released and m.last_release <= flushed)
                   for m in self.gate.marks().values())

    def unsettled(self, limit: int = 3) -> dict:
        """Why settled() is false: what waits in the queues, and the marks still holding back."""
        with self.lock:
            out = {"peer_q": len(self.peer_q), "switch_q": len(self.switch_q), "draining": self.draining,
                   "ibc_peer": list(self.ibc_peer), "ibc_switch": list(self.ibc_switch)}
        if self.in_gate:
            hs = self.gate.hold_state()
            out["hold_fifo"] = {"head": hs.head, "cursor": hs.cursor}
        cfg = self.gate.move_cfg()
        st = self.gate.move_state()
        out.update(flushed=cfg.flushed_seq, drain_epoch=cfg.drain_epoch, epoch=cfg.epoch, peer_cut=cfg.peer_cut,
                   bpf_ibc_peer=list(st.ibc_peer), bpf_ibc_switch=list(st.ibc_switch), cursor=st.release_cursor)
        bad = [(m.epoch, m.buffered, m.released, m.last_release) for m in self.gate.marks().values()
               if m.action in HOLDING and (m.buffered != m.released or m.last_release > cfg.flushed_seq)]
        out["holding_marks"] = len(bad)
        out["sample"] = bad[:limit]
        return out

    # ---- tear down ----
    def end(self, keep_marks: bool = False) -> dict:
        self.gate.clear_filter(FILTER_SLOT)
        # marks first: from here on nothing is held back, so what the ring holds is all there is
        if not keep_marks:
            self.gate.unmark()
        self.gate.clear_drain()
        # an XDP run that read a mark just before it went may still be buffering: let it finish,
        # so the last read of the ring below has its packet
        settle(self.nf, time.perf_counter())
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        self._take(self.ring.poll(0))
        self.hold_own = False             # a called-off op dup move: its own packets go too
        if self.in_gate and self.dup and self.role == "dst":
            self.gate.set_move_cfg(dup=L.DUP_SHADOW)  # ... in the gate too (nfx_hold_next stops at them)
        if self.role in HOLDERS and (self.peer_q or self.switch_q or self.in_gate):
            self._release_ready()
            for _ in range(5):            # a slot reserved just before the marks went: its turn
                hs = self.gate.hold_state() if self.in_gate else None
                if hs is None or hs.head == hs.cursor:
                    break
                time.sleep(SETTLE_S)
                self._release_ready()
        self.gate.reset_move()            # the ring reader stays open for the next move
        if self.releaser:
            self.releaser.close()
        return dict(self.stats)
