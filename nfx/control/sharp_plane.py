"""The switches as SHarP's controller drives them (nfx/migrate/sharp.py): wildcard entries in the
handover band (above every move's rules), per-flow exact entries on shared rules, the controller
ring of every switch (read on one thread here and handed to the handover a record belongs to, by
rule id or by the epoch of a handover message), packet-outs on a switch's port toward an
instance, and the test packet injected on a switch's host side (so it shares the flows' FIFO)."""
import logging
import socket
import struct
import threading
import time

from .. import layout as L
from ..errors import BadInput, NfxError, NotFound
from ..filter import Filter
from ..frames import frame_key, hsl_message, parse_hsl_message
from ..loader import netns
from .steer import PRIO_MIN, Steering, filter_match
from .switch import Rule

log = logging.getLogger("nfx.sharp")

# the handover band: wildcard prios below every move rule's (steer.PRIO_MIN). A request of
# priority r gets 2r+1 (detection) and 2r (forward), counted down from the band's top, so a
# higher r is matched first
BAND_TOP = PRIO_MIN - 1
MAX_PRIORITY = (BAND_TOP - 1) // 2


def prio(r: int, detect: bool) -> int:
    if not 0 <= r <= MAX_PRIORITY:
        raise BadInput(f"priority {r} out of range 0..{MAX_PRIORITY}")
    return BAND_TOP - (2 * r + (1 if detect else 0))


class Plane:
    """One per controller. `listen(epoch, rules, on_packet, on_message)` routes the ring records
    of a handover: data packets whose rule id is in its set for that switch, and handover
    messages carrying its epoch."""

    def __init__(self, steer: Steering):
        self.steer = steer
        self.rec = steer.rec
        self.lock = threading.Lock()
        self._by_rule: dict[tuple[str, int], object] = {}     # (switch, rule id) -> handover
        self._by_epoch: dict[int, object] = {}
        self._out: dict[tuple[str, str], socket.socket] = {}  # (switch, port) -> packet socket
        self._stop = threading.Event()
        self._readers = {name: sw.ctrl_reader() for name, sw in steer.sw.items()}
        self._thread = threading.Thread(target=self._read, daemon=True, name="sharp-ring")
        self._thread.start()

    # ---- topology ----
    @property
    def switches(self) -> list[str]:
        return list(self.steer.sw)

    def side(self, sw: str) -> int:
        return self.steer.side_of(sw)

    def port(self, sw: str, nf: str) -> str:
        return self.steer.port_of(sw, nf)

    def match(self, sw: str, flt: Filter):
        """The filter as `sw` sees it: as written on the inside switch, reversed on the other."""
        return filter_match(flt, self.steer.host_port[sw], reverse=self.side(sw) != L.SIDE_IN)

    def sources(self, flt: Filter, below: int) -> set[str]:
        """The instances the filter's flows reach today on the inside switch, by the rules below
        prio `below` (a higher handover's entries are its own business): every rule that may
        match one of them, down to the first that matches all."""
        sw = next(n for n in self.switches if self.side(n) == L.SIDE_IN)
        want = self.match(sw, flt)
        names = {p: nf for nf, p in self.rec["nodes"][sw]["ifaces"].items()
                 if self.rec["nodes"][nf]["role"] == "nf"}
        out: set[str] = set()
        with self.lock:
            running = {rid for (name, rid) in self._by_rule if name == sw}
            rules = self.steer.sw[sw].rules()
        # a running handover's entries are in flux (detection, a destination not reached yet):
        # its flows are still where the rules under them send them
        for info in sorted((r for r in rules
                            if r.kind == "wild" and r.prio > below and r.id not in running), key=lambda r: r.prio):
            m = info.match
            if not _overlaps(m, want):
                continue
            out |= {names[p] for p in info.rule.output if p in names}
            if _covers(m, want):
                break
        return out

    # ---- rules ----
    # the handover band is this plane's: Steering's own book keeps the move band only
    # a handover's wildcards are installed and owned in one step (under the plane's lock, which
    # sources() holds while it reads the rules): seen unowned for a moment, another request took
    # a detection entry (no output) for where its flows go, and found them nowhere
    def add_detection(self, sw: str, flt: Filter, r: int, handover) -> int:
        """2r+1: the filter's packets to the controller."""
        with self.lock:
            rid = self.steer.sw[sw].add_wild(self.match(sw, flt), Rule(to_ctrl=True), prio=prio(r, True))
            self._by_rule[(sw, rid)] = handover
        return rid

    def add_forward(self, sw: str, flt: Filter, r: int, dst: str, handover) -> int:
        """2r+0: the filter's packets to dst."""
        with self.lock:
            rid = self.steer.sw[sw].add_wild(self.match(sw, flt), Rule(output=[self.port(sw, dst)]),
                                             prio=prio(r, False))
            self._by_rule[(sw, rid)] = handover
        return rid

    def shared_to_ctrl(self, sw: str) -> int:
        return self.steer.sw[sw].shared_rule(Rule(to_ctrl=True))

    def shared_follow(self, sw: str, dst: str) -> int:
        """BUFFER_FOLLOW_UP: to dst, and a copy to the controller."""
        return self.steer.sw[sw].shared_rule(Rule(output=[self.port(sw, dst)], to_ctrl=True))

    def stop_copies(self, sw: str, rid: int, dst: str) -> None:
        self.steer.sw[sw].set_rule(rid, Rule(output=[self.port(sw, dst)]))

    def owner(self, sw: str, frame: bytes) -> str | None:
        """The instance a frame's flow goes to by the rules below the handover band (a rollback
        hands the controller's packets back there)."""
        k = frame_key(frame)
        if k is None:
            return None
        names = {p: nf for nf, p in self.rec["nodes"][sw]["ifaces"].items()
                 if self.rec["nodes"][nf]["role"] == "nf"}
        for info in sorted((r for r in self.steer.sw[sw].rules() if r.kind == "wild" and r.prio > BAND_TOP),
                           key=lambda r: r.prio):
            if _key_matches(info.match, k, self.steer.host_port[sw]):
                return next((names[p] for p in info.rule.output if p in names), None)
        return None

    def remove(self, sw: str, rid: int) -> None:
        try:
            self.steer.sw[sw].remove(rid)
        except NotFound:
            pass

    def point_exact(self, sw: str, keys: list, rid: int) -> None:
        self.steer.sw[sw].point_exact(keys, rid)

    def unpoint_exact(self, sw: str, keys: list) -> None:
        self.steer.sw[sw].unpoint_exact(keys)

    def last_hit_ns(self, sw: str, rid: int) -> int | None:
        return self.steer.sw[sw].last_hit_ns(rid)

    def point(self, flt: Filter, nfs: list[str], outside_keys: list | None = None) -> None:
        """The final forwarding, in the move band (the newest wins there); a NAT's return
        traffic by its public tuples when they are given."""
        self.steer.point(flt, nfs, outside_keys)

    # ---- the ring ----
    def listen(self, epoch: int, handover) -> None:
        with self.lock:
            self._by_epoch[epoch] = handover

    def own(self, sw: str, rid: int, handover) -> None:
        with self.lock:
            self._by_rule[(sw, rid)] = handover

    def forget(self, epoch: int) -> None:
        with self.lock:
            self._by_epoch.pop(epoch, None)
            for k in [k for k, h in self._by_rule.items() if getattr(h, "epoch", None) == epoch]:
                del self._by_rule[k]

    def _read(self) -> None:
        while not self._stop.is_set():
            busy = False
            for sw, rd in self._readers.items():
                try:
                    recs = rd.poll(0)
                except Exception as e:
                    log.warning("reading %s's controller ring: %s", sw, e)
                    continue
                for p in recs:
                    busy = True
                    self._dispatch(sw, p)
            if not busy:
                time.sleep(0.0005)

    def _dispatch(self, sw: str, p) -> None:
        msg = parse_hsl_message(p.data) if p.hsl else None
        with self.lock:
            h = self._by_epoch.get(msg[1]) if msg else self._by_rule.get((sw, p.rule))
        if h is None:
            return
        try:
            if msg:
                h.on_message(sw, *msg)
            else:
                h.on_packet(sw, p.rule, p.data)
        except Exception:
            log.exception("handover %s: a record from %s", getattr(h, "epoch", "?"), sw)

    # ---- packet-outs ----
    def _sock(self, sw: str, port: str) -> socket.socket:
        # a packet socket bound to the switch's port: what it sends leaves toward the instance
        # there, behind what the switch already sent that way (one FIFO), as an OpenFlow
        # packet-out would. Kept open: closing one waits out an RCU grace period.
        with self.lock:
            s = self._out.get((sw, port))
            if s is None:
                with netns.enter(self.steer.sw[sw].ns):
                    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                    s.bind((port, 0))
                self._out[(sw, port)] = s
            return s

    def packet_out(self, sw: str, nf: str, frames: list[bytes]) -> None:
        s = self._sock(sw, self.port(sw, nf))
        for f in frames:
            while True:
                try:
                    s.send(f)
                    break
                except BlockingIOError:
                    time.sleep(0.0001)
                except OSError as e:
                    if e.errno != 105:              # ENOBUFS: the queue is full for a moment
                        raise NfxError(f"packet-out on {sw} toward {nf}: {e.strerror}") from None
                    time.sleep(0.0001)

    def message(self, sw: str, nf: str, kind: int, epoch: int, body: dict) -> None:
        s = self._sock(sw, self.port(sw, nf))
        self.packet_out(sw, nf, [hsl_message(kind, epoch, self.side(sw), body, s.getsockname()[4])])

    def test_packet(self, sw: str, epoch: int) -> None:
        """SHarP's test packet, from the host side of `sw`: it enters the switch behind every
        packet that arrived before it, and the switch hands it to the controller."""
        self.steer.sw[sw].expect_test(epoch)
        host = self.steer.host_of[sw]
        s = self.steer.host_socket(host)
        s.send(hsl_message(L.HslKind.TEST, epoch, self.side(sw), {}, s.getsockname()[4] if s.getsockname()[4]
                         else b"\x02" + bytes(5)))

    def test_seen(self, sw: str, epoch: int) -> None:
        self.steer.sw[sw].forget_test(epoch)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for rd in self._readers.values():
            rd.close()
        with self.lock:
            socks, self._out = list(self._out.values()), {}
        for s in socks:
            s.close()


def _prefix_of(p: str | None) -> tuple[int, int]:
    if not p:
        return 0, 0
    a, _, bits = p.partition("/")
    n = int.from_bytes(socket.inet_aton(a), "big")
    b = int(bits) if bits else 32
    mask = (0xFFFFFFFF << (32 - b)) & 0xFFFFFFFF if b else 0
    return n & mask, mask


def _field_overlaps(a, b) -> bool:
    return not a or not b or a == b


def _prefix_overlaps(a, b) -> bool:
    (na, ma), (nb, mb) = _prefix_of(a), _prefix_of(b)
    m = ma & mb
    return (na & m) == (nb & m)


def _overlaps(m, want) -> bool:
    """Whether some packet matches both wildcards (ports of the same switch)."""
    return (_field_overlaps(m.in_port, want.in_port) and _prefix_overlaps(m.src, want.src)
            and _prefix_overlaps(m.dst, want.dst) and _field_overlaps(m.sport, want.sport)
            and _field_overlaps(m.dport, want.dport) and _field_overlaps(m.proto, want.proto))


def _key_matches(m, k, in_port: str) -> bool:
    def pfx(p, addr):
        n, mask = _prefix_of(p)
        return (int.from_bytes(struct.pack("<I", addr), "big") & mask) == n
    return ((not m.in_port or m.in_port == in_port) and pfx(m.src, k.saddr) and pfx(m.dst, k.daddr)
            and (not m.sport or m.sport == socket.ntohs(k.sport)) and (not m.dport or m.dport == socket.ntohs(k.dport))
            and (not m.proto or m.proto == k.proto))


def _covers(m, want) -> bool:
    """Whether every packet `want` matches, `m` matches too."""
    def prefix_covers(a, b):
        (na, ma), (nb, mb) = _prefix_of(a), _prefix_of(b)
        return (ma & mb) == ma and (nb & ma) == na
    return ((not m.in_port or m.in_port == want.in_port) and prefix_covers(m.src, want.src)
            and prefix_covers(m.dst, want.dst) and (not m.sport or m.sport == want.sport)
            and (not m.dport or m.dport == want.dport) and (not m.proto or m.proto == want.proto))


def filter_overlap(a: Filter, b: Filter) -> bool:
    """Whether some packet matches both filters (as written, on one port)."""
    return _overlaps(filter_match(a, "p", False), filter_match(b, "p", False))
