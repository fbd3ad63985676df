"""The gate of one NF instance, from user space: the only writer of its marks, wildcard filters,
gate and move settings, early-release set and release slots, and the reader of its buffer ring.
NFs, agents and moves all go through a Gate, so the write orders the datapath relies on live
here once:
- the gate's `marks` flag is raised before the first mark exists (the datapath skips the mark
  lookup while it is 0), and a filter's slot is written before the filter count covers it;
- the gate's config (marks, filters, share) is read-modify-written under one lock;
- nfx_move_cfg is read-modify-written under one lock (two agent threads set different fields);
- the release path replays packets through the instance's own attached program, a batch at a
  time (one live test run, or on a kernel without live frames one kick of empty frames into the
  release veth: nfx/release_kick.py), so they are processed exactly as if they had just arrived,
  in order.

    g = Gate(nf)
    g.mark(keys, L.Action.BUFFER, epoch=e)
    g.set_filter(0, filter.parse("proto=udp"), L.Action.BUFFER, tag=e)
"""
import ctypes as ct
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

from . import layout as L
from .errors import BadInput, BpfError
from .loader import bpfsys, netns, transmit
from .loader.ifstats import VETH_RING, VethRing
from .loader.ring import RingReader, RingStandIn
from .loader.spec import MapSet, MapSpec
from .packets import Packet, decode
from .filter import Filter
from . import release_kick
from .release_kick import KickPath

log = logging.getLogger("nfx.move")
RELEASE_TRIES = 5
FRAME0 = bytes(60)     # the release path grows or shrinks this to each packet
SLOT_SIZE = ct.sizeof(L.ReleaseSlot)
SLOT_DATA = L.ReleaseSlot.data.offset
SLOT_HEAD = struct.Struct("<IBB")      # nfx_release_slot's len, side, rx (tests/unit checks it)


class GATE_MAPS(MapSet):
    """The gate's maps in every NF program (bpf/include/nfx_nf.h)."""
    nfx_marks = MapSpec(L.FlowKey, L.Mark)
    nfx_filters = MapSpec(L.u32, L.Filter)
    nfx_gate_cfg = MapSpec(L.u32, L.GateCfg)
    nfx_move_cfg = MapSpec(L.u32, L.MoveCfg)
    nfx_move_state = MapSpec(L.u32, L.MoveState)
    nfx_release = MapSpec(L.u32, L.ReleaseSlot)
    nfx_hold = MapSpec(L.u32, L.ReleaseSlot)          # the hold FIFO: the program alone writes both
    nfx_hold_state = MapSpec(L.u32, L.HoldState)
    nfx_drain = MapSpec(L.FlowKey, L.u32)
    nfx_pktbuf = MapSpec(RingStandIn, RingStandIn)   # ringbuf: read it with Gate.ring()


def check_ports(f: Filter) -> tuple[int, int]:
    """The gate's wildcard filters (and so a move's filter, whose new flows they hold back) match
    one port or any: (sport, dport) in network order, 0 for any; a port range is refused."""
    out = []
    for name in ("sport", "dport"):
        lo, hi = getattr(f, name)
        if (lo, hi) == (0, 65535):
            out.append(0)
        elif lo == hi:
            out.append(socket.htons(lo))
        else:
            raise BadInput(f"gate filters (and so a move's filter) take a single {name} or any, "
                           f"not a range ({lo}-{hi})")
    return out[0], out[1]


def key_array(keys):
    """Flow keys as one ctypes array (given one, as it is)."""
    if isinstance(keys, ct.Array) and keys._type_ is L.FlowKey:
        return keys
    return (L.FlowKey * len(keys)).from_buffer_copy(b"".join(bytes(k) for k in keys))


# one reader per ring and process: mapping a 64 MiB ring costs ~26 ms, too much to pay at the
# start of every move. Keyed by the ring's map id, so a ring replaced by a hot upgrade gets a new one.
_RINGS: dict[tuple[str, int], RingReader] = {}
_RINGS_LOCK = threading.Lock()
# nfx_move_cfg's read-modify-write: only user space writes it (the program only reads it)
_CFG_LOCK = threading.Lock()
# nfx_gate_cfg's: the program also raises its `marks` flag (see set_share)
_GATE_LOCK = threading.Lock()


class Gate:
    def __init__(self, nf):
        self.nf = nf
        self.maps = nf.maps

    # ---- marks ----
    def cfg(self) -> L.GateCfg:
        return self.maps.nfx_gate_cfg.get(L.u32(0)) or L.GateCfg()

    def mark(self, keys, action: L.Action, epoch: int = 0, peer: int = 0, tag: int = 0) -> int:
        """Mark many flows at once (batch update); returns how many the kernel took."""
        n = len(keys)
        if not n:
            return 0
        with _GATE_LOCK:
            g = self.cfg()
            if not g.marks:
                g.marks = 1          # before any mark exists, so no packet skips one
                self.maps.nfx_gate_cfg.put(L.u32(0), g)
        one = L.Mark(action=int(action), epoch=epoch, peer=peer, tag=tag)
        vals = (L.Mark * n).from_buffer_copy(bytes(one) * n)
        return self.maps.nfx_marks.update_batch(key_array(keys), vals, n)

    def unmark(self, keys=None) -> int:
        """Remove the marks of `keys` (None: every mark); returns how many there were."""
        m = self.maps.nfx_marks
        if keys is None:
            return m.clear()
        n = len(keys)
        if not n:
            return 0
        arr = key_array(keys)
        done = m.delete_batch(arr, n)
        if done < n:
            # the kernel ends a batch at the first key with no mark: the rest one by one
            done += sum(m.delete(arr[i]) for i in range(done + 1, n))
        return done

    def marks(self) -> dict[bytes, L.Mark]:
        n, ks, vs = self.maps.nfx_marks.export()
        return {bytes(ks[i]): vs[i] for i in range(n)}

    # ---- wildcard filters (flows with no mark: those born during a move) ----
    def put_filter(self, slot: int, f: L.Filter) -> None:
        """Write a filter slot as it is; the gate's filter count then covers it."""
        self.maps.nfx_filters.put(L.u32(slot), f)
        with _GATE_LOCK:
            g = self.cfg()
            if f.flags & L.FILTER_USED and g.filters <= slot:
                g.filters = slot + 1
                self.maps.nfx_gate_cfg.put(L.u32(0), g)

    def set_filter(self, slot: int, flt: Filter, action: L.Action, peer: int = 0, tag: int = 0,
                   bidir: bool = True) -> L.Filter:
        sport, dport = check_ports(flt)
        f = L.Filter(saddr=flt.src[0], smask=flt.src[1], daddr=flt.dst[0], dmask=flt.dst[1], sport=sport,
                     dport=dport, proto=flt.proto, action=int(action),
                     flags=L.FILTER_USED | (L.FILTER_BIDIR if bidir else 0), peer=peer, tag=tag)
        self.put_filter(slot, f)
        return f

    def clear_filter(self, slot: int) -> None:
        self.maps.nfx_filters.put(L.u32(slot), L.Filter())

    def filters(self) -> dict[int, L.Filter]:
        """The slots in use."""
        fm = self.maps.nfx_filters
        out = {}
        for slot in range(L.MAX_FILTERS):
            f = fm.get(L.u32(slot))
            if f is not None and f.flags & L.FILTER_USED:
                out[slot] = f
        return out

    # ---- fencing (issue 14) ----
    FENCE_SLOT = 0       # the first filter slot: the gate takes the first that matches

    def fence(self) -> None:
        """An instance the cluster failed over from forwards nothing (every packet dropped,
        counted r_gate_drop) until unfenced: a drop filter for every flow in the first slot,
        then no marks (a marked flow would skip the filters)."""
        self.set_filter(self.FENCE_SLOT, Filter(), L.Action.DROP)
        self.unmark()

    def unfence(self) -> None:
        self.clear_filter(self.FENCE_SLOT)

    def fenced(self) -> bool:
        f = self.maps.nfx_filters.get(L.u32(self.FENCE_SLOT))
        return bool(f is not None and f.flags & L.FILTER_USED and f.action == L.Action.DROP
                    and not (f.smask or f.dmask or f.sport or f.dport or f.proto))

    # ---- sharing ----
    def set_share(self, on: bool, batch: int = 1) -> L.GateCfg:
        """Share state: a packet the NF processes with plain PROCESS is mirrored as if marked
        STATELET (counted r_shared), and its record goes out when it is at its flow's batch
        boundary (its stamp a multiple of `batch`, or no stamp) or makes or ends an entry; the
        others write none (counted r_share_quiet too). A shared record carries every field of
        the entries it touches. Every record written meanwhile starts with a STAMP statelet: the packet's flow
        key and stamp (0: none); SLiM's STATELET marks and filters are otherwise left as they
        are. The records go to the instance's statelet ring."""
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 0xFFFFFFFF:
            raise BadInput(f"share batch is 1..{0xFFFFFFFF}, not {batch!r}")
        with _GATE_LOCK:
            g = self.cfg()
            g.share = 1 if on else 0
            g.share_batch = batch
            # the program raises `marks` itself for a flow first seen under a BUFFER filter; it
            # may do so between this read and write, so with filters in use the flag stays up
            # (a spare mark lookup per packet, never a skipped mark)
            if g.filters:
                g.marks = 1
            self.maps.nfx_gate_cfg.put(L.u32(0), g)
            return g

    def sharing(self) -> bool:
        return bool(self.cfg().share)

    # ---- move settings ----
    def move_cfg(self) -> L.MoveCfg:
        return self.maps.nfx_move_cfg.get(L.u32(0)) or L.MoveCfg()

    def set_move_cfg(self, **fields) -> L.MoveCfg:
        with _CFG_LOCK:
            c = self.move_cfg()
            for k, v in fields.items():
                if not hasattr(c, k):
                    raise BadInput(f"no move setting {k!r}")
                setattr(c, k, v)
            self.maps.nfx_move_cfg.put(L.u32(0), c)
            return c

    def move_state(self) -> L.MoveState:
        return self.maps.nfx_move_state.get(L.u32(0)) or L.MoveState()

    def hold_state(self) -> L.HoldState:
        """The gate's hold FIFO (bpf/include/nfx_hold.h): written by the program only."""
        return self.maps.nfx_hold_state.get(L.u32(0)) or L.HoldState()

    def reset_move(self) -> None:
        """Between moves: no epoch, no IBCs seen (the release cursor and sequence keep counting)."""
        st = self.move_state()
        self.maps.nfx_move_state.put(L.u32(0), L.MoveState(release_cursor=st.release_cursor,
                                                           release_seq=st.release_seq))
        with _CFG_LOCK:
            self.maps.nfx_move_cfg.put(L.u32(0), L.MoveCfg(flushed_seq=self.move_cfg().flushed_seq))

    # ---- early release: flows whose buffered packets may go before the rest ----
    def drain(self, keys) -> int:
        n = len(keys)
        if not n:
            return 0
        return self.maps.nfx_drain.update_batch(key_array(keys), (L.u32 * n)(*([1] * n)), n)

    def clear_drain(self) -> int:
        return self.maps.nfx_drain.clear()

    # ---- the buffer ring and the release path ----
    def ring(self) -> RingReader:
        """Reader of the instance's buffer ring, opened from its pin once per process and kept."""
        fd = bpfsys.obj_get(str(Path(self.nf.pin_dir) / "nfx_pktbuf"))
        try:
            key = (str(self.nf.pin_dir), bpfsys.map_info(fd).id)
            with _RINGS_LOCK:
                r = _RINGS.get(key)
                if r is None or r.closed:
                    r = _RINGS[key] = RingReader(fd, decode)
                return r
        finally:
            os.close(fd)

class Releaser:
    """Hands packets back to the instance's program through its release veth. Each call replays
    up to PER_CALL packets in order in one live test run (or one kick: nfx/release_kick.py);
    when it returns, they have all left the program, and flushed_seq says so to the gate.

    Released packets leave by the instance's egress veths, into the next hop's receive ring,
    which they share with the live traffic. That ring holds VETH_RING frames, and XDP gives a
    redirect no backpressure: what does not fit is dropped. Its consumer is a NAPI that may run
    on another, busy CPU (seen: 263 of 2748 released packets dropped so, as the egress veth's
    xdp_xmit_errors). So before each call the releaser waits until every egress ring has room
    for the call plus as much live traffic again, reading the ring's fill from the veth's
    counters (VethRing). It waits only while a ring is that full, so an idle path releases at
    full speed."""

    PER_CALL = 64
    ROOM = VETH_RING - 2 * PER_CALL
    WAIT_LIMIT_S = 0.5      # a ring that does not drain for this long: its consumer is gone

    def __init__(self, nf, ns: str, release_if: str, egress: tuple[str, ...] = ()):
        self.nf, self.ns = nf, ns
        self.gate = Gate(nf)
        self.prog_fd = bpfsys.obj_get(str(Path(nf.pin_dir) / "prog"))
        self.ifindex = netns.ifindex(release_if, ns)
        self.kick = None
        try:
            if transmit.mode() == "tc":
                self.kick = KickPath(ns, release_if, self.prog_fd)
        except BaseException:
            self.close()
            raise
        self.rings = [VethRing(i, ns) for i in egress]
        self.lock = threading.Lock()
        self.released = 0
        self.ring_waits = 0         # calls that had to wait for a ring
        self.ring_wait_s = 0.0
        # one call's slots, reused: filled with struct and slice copies, a few times cheaper
        # per packet than ctypes field writes
        self._slots = bytearray(SLOT_SIZE * self.PER_CALL)
        self._keys = (L.u32 * self.PER_CALL)()

    @staticmethod
    def prepare(nf, ns: str, release_if: str) -> None:
        """The release path made ready before any move needs it: on the tc transport, the release
        veth's MTU raised for the kick's frames and the NF's program on it (the builder attaches
        it already). Done in a first move's Releaser instead, that move's hold phase took 56 ms,
        against 6 ms with this at the agent's start (one 100k-flow run each)."""
        if transmit.mode() != "tc":
            return
        fd = bpfsys.obj_get(str(Path(nf.pin_dir) / "prog"))
        try:
            release_kick.ready(ns, release_if, fd)
        finally:
            os.close(fd)

    def close(self):
        if self.prog_fd >= 0:
            os.close(self.prog_fd)
            self.prog_fd = -1
        if self.kick is not None:
            self.kick.close()
        for r in getattr(self, "rings", ()):
            r.close()
        self.rings = []

    def release_held(self, batch: int = 32) -> int:
        """Replay what waited in the gate's hold FIFO (move_cfg.hold) when called, in order,
        PER_CALL at a time with room in the egress rings; stop at a slot not committed yet (the
        next call takes it). What arrives meanwhile is the next call's: under traffic that comes
        as fast as it goes, one call would otherwise never return. Returns how many slots it took:
        released, or dropped as an earlier move's (r_hold_stale)."""
        # in the instance's netns for the whole loop (release() too): entered per call, its two
        # setns took 76 us a call, a seventh of the test runs' time, releasing 160k packets
        with self.lock, netns.enter(self.ns):
            done = 0
            end = self.gate.hold_state().head
            while True:
                hs = self.gate.hold_state()
                waiting = (end - hs.cursor) & 0xFFFFFFFF
                if not waiting or waiting > L.HOLD_SLOTS_MAX:
                    break
                self._wait_for_room()
                n = min(waiting, self.PER_CALL)
                before = self._held_frames() if self.kick is not None else 0
                self._fire(n, batch)
                if self.kick is not None:
                    self.kick.settle(self._held_frames, before, before + n)
                took = (self.gate.hold_state().cursor - hs.cursor) & 0xFFFFFFFF
                self.gate.set_move_cfg(flushed_seq=self.gate.move_state().release_seq)
                done += took
                if took < n:
                    break                # a slot reserved, not yet written: it is the next call's
            self.released += done
            return done

    def release(self, packets: list[Packet], rx: int = L.RX_RELEASED, batch: int = 32) -> int:
        """Replay packets (RX_RELEASED: from this instance's buffer, counted by the gate;
        RX_INJECTED: from elsewhere, processed as they are) through the release slots; not while
        the gate holds in its own FIFO (move_cfg.hold), which the release path then reads."""
        with self.lock, netns.enter(self.ns):
            if self.gate.move_cfg().hold:
                raise BpfError("the gate holds in its FIFO: its release path does not read release slots now")
            done = 0
            while done < len(packets):
                self._wait_for_room()
                part = packets[done:done + self.PER_CALL]
                self._run(part, rx, batch)
                done += len(part)
            self.released += len(packets)
            return done

    def _fire(self, n: int, batch: int) -> None:
        """n runs of the release path (in the instance's netns)."""
        if self.kick is None:
            bpfsys.prog_test_run(self.prog_fd, FRAME0, repeat=n, live=True, ingress_ifindex=self.ifindex,
                                 batch_size=min(batch, n))
        else:
            self.kick.fire(n)

    def _held_frames(self) -> int:
        """Release frames the program has taken while it holds: each takes a slot of the FIFO
        (its cursor) or finds the next not written yet (r_release_wait)."""
        waits = self.nf.maps.nfx_stats.sum_percpu(L.u32(L.Stat.R_RELEASE_WAIT))
        return (self.gate.hold_state().cursor + waits) & 0xFFFFFFFF

    def _cursor(self, read, start: int, target: int) -> int:
        """A cursor of the release path after _fire: final when a live run returns; the kicked
        frames may still be on their way (KickPath.settle)."""
        return read() if self.kick is None else self.kick.settle(read, start, target)

    def _wait_for_room(self) -> None:
        if not self.rings or max(r.fill() for r in self.rings) <= self.ROOM:
            return
        t0 = time.monotonic()
        self.ring_waits += 1
        while max(r.fill() for r in self.rings) > self.ROOM:
            if time.monotonic() - t0 > self.WAIT_LIMIT_S:
                log.warning("an egress ring of %s stayed over %d frames for %.1f s: releasing anyway",
                            self.ns, self.ROOM, self.WAIT_LIMIT_S)
                break
            time.sleep(0.0001)
        self.ring_wait_s += time.monotonic() - t0

    def _run(self, part: list[Packet], rx: int, batch: int) -> None:
        n = len(part)
        cur = self.gate.move_state().release_cursor
        buf, keys = self._slots, self._keys
        for i, p in enumerate(part):
            size = len(p.data)
            if not 14 <= size <= L.MAX_PKT:
                raise BadInput(f"packet of {size} bytes cannot be released")
            keys[i] = (cur + i) % L.RELEASE_SLOTS
            at = i * SLOT_SIZE
            SLOT_HEAD.pack_into(buf, at, size, p.side, rx)
            buf[at + SLOT_DATA:at + SLOT_DATA + size] = p.data
        self.gate.maps.nfx_release.update_batch(keys, (L.ReleaseSlot * n).from_buffer(buf), n)
        # a live run can stop part way (the kernel ends it early on a pending signal, or fails
        # to set it up): the cursor says how far it got, and only the rest is run again, so no
        # packet goes twice and none is left in its slot
        end, err = cur, None
        for _ in range(RELEASE_TRIES):
            left = cur + n - end
            try:
                self._fire(left, batch)
            except BpfError as e:
                err = e
            end = self._cursor(lambda: self.gate.move_state().release_cursor, end, cur + n)
            if end == cur + n:
                break
            log.warning("release run stopped at %d of %d slots (%s): running the rest again", end - cur, n, err)
            time.sleep(0.001)
        if end != cur + n:
            raise BpfError(f"release path consumed {end - cur} of {n} slots" + (f": {err}" if err else ""))
        if rx == L.RX_RELEASED:
            self.gate.set_move_cfg(flushed_seq=self.gate.move_state().release_seq)
