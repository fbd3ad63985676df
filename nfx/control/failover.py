"""Failover (issue 14): the failure detection unit (FDU) and the promotion, in the controller
process, the switches' one writer at runtime.

Every primary has a secondary in its cluster, which holds the primary's state through the
batched sharing (nfx/agent/share.py): NAT mappings at once, counters every S_batch packets.
Who serves a slot is one record in etcd (GlobalState pairs/<slot>), changed only by a
transaction that finds it unchanged; the switches follow that record.

Detection, whichever comes first:
- heartbeats: each agent sends one every `heartbeat_ms` over the management network
  (nfx/agent/heartbeat.py) to a socket here; `misses` beats in a row missing make it suspect;
- its etcd lease: its membership key expires `ttl_s` after its agent stopped keeping it alive.
Promotion of a suspect primary P with secondary S:
1. the pair's record: S primary, by transaction (a second detector, or a slow one, loses here:
   one record, one primary);
2. P fenced: its gate drops every packet (Gate.fence, through its pins), so a P that was only
   slow (a paused agent: its program still runs) forwards nothing once it resumes;
3. S writes P's flows from its replicas into its maps (replica_promote);
4. the switches send the slot's traffic to S;
5. a spare becomes S's secondary: S shares with it, its base snapshot first, while traffic runs.
P comes back only as a fenced spare: it takes traffic again after a planned move to it, whose
state transfer is the sync (nfx cluster failback)."""
import array
import fcntl
import socket
import termios
import threading
import time

from .. import registry
from ..agent.client import AgentClient
from ..agent.heartbeat import parse_beat
from ..errors import BadInput, NfxError
from ..etcd import Etcd
from ..etcd.globalstate import GlobalState
from ..filter import Filter
from ..gate import Gate
from ..loader import netns
from ..nfs import open_node

PROMOTE_TIMEOUT_S = 10.0
FIRST_BEAT_S = 5.0


class Failover:
    def __init__(self, ctl, etcd_url: str, pairs: dict[str, list[str]], spares: list[str], heartbeat_ms: float,
                 misses: int, ttl_s: int, batch: int, idle_ms: float, send_ms: float = 0.0):
        self.ctl, self.testbed = ctl, ctl.testbed
        rec = registry.load(self.testbed)
        self.mgmt = rec["mgmt"]
        self.etcd_url = etcd_url
        etcd = Etcd(etcd_url)
        if rec.via_mgmt(etcd.host):
            etcd.enter = lambda: netns.enter(self.mgmt["ns"])
        self.gs = GlobalState(etcd, self.testbed)
        self.heartbeat_ms, self.misses, self.ttl_s = heartbeat_ms, misses, ttl_s
        self.batch, self.idle_ms, self.send_ms = batch, idle_ms, send_ms
        self.spares = list(spares)
        self.lock = threading.Lock()
        self.slots: dict[str, dict] = {}          # slot -> {primary, secondary}, as in etcd
        for slot, (p, s) in pairs.items():
            self.slots[slot] = {"primary": p, "secondary": s}
        self.last_seen: dict[str, float] = {}
        self.beats: dict[str, int] = {}
        self.max_gap: dict[str, float] = {}
        self.failing: set[str] = set()            # primaries being failed over now
        self.known: dict[str, tuple[dict, int]] = {}   # slot -> its etcd record and revision
        self.planned: set[str] = set()            # slots a failback is moving (not watched meanwhile)
        self.stranded: set[str] = set()           # silent primaries with no secondary (said once)
        self.fenced: set[str] = set()
        self.lease_ignored: dict[str, int] = {}   # memberships that ended while their agent beat
        self.events: list[dict] = []
        self.beating: set[str] = set()            # asked to beat here (told to stop at the end)
        self.stop_ev = threading.Event()
        with netns.enter(self.mgmt["ns"]):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((self.mgmt["controller"], 0))
        self.sock.settimeout(0.2)
        self.addr = f"{self.mgmt['controller']}:{self.sock.getsockname()[1]}"
        self.threads = [threading.Thread(target=f, name=n, daemon=True)
                        for f, n in ((self._receive, "fdu-rx"), (self._monitor, "fdu-monitor"))]
        self.watch = None

    # ---- lifetime ----
    def start(self) -> dict:
        self.refresh()
        for t in self.threads:
            t.start()
        for inst in self.watched():
            self.beat_request(inst, self.addr)
        # an instance is watched from its first beat on (its beater takes a moment to start)
        end = time.monotonic() + FIRST_BEAT_S
        while missing := [i for i in self.watched() if i not in self.last_seen]:
            if time.monotonic() > end:
                raise NfxError(f"no heartbeat from {', '.join(missing)} within {FIRST_BEAT_S:g} s of asking",
                               hint="is the management network up? nfx testbed status shows the agents")
            time.sleep(0.01)
        self.watch = self.gs.watch_members(self._member_event)
        return self.status()

    def stop(self) -> dict:
        self.stop_ev.set()
        for inst in sorted(self.beating):
            try:
                self.beat_request(inst, None)
            except NfxError:
                pass                      # gone (failed over from): its beater went with its agent
        if self.watch is not None:
            self.watch.stop()
        for t in self.threads:
            if t.ident is not None:
                t.join(timeout=2.0)
        self.sock.close()
        return self.status()

    def refresh(self) -> None:
        """The pairs' records and revisions as etcd has them: a failover's transaction compares
        with these without reading them first (off the detection-to-recovery path)."""
        for slot in list(self.slots):
            got = self.gs.pair(slot)
            if got is not None:
                self.known[slot] = got

    def watched(self) -> list[str]:
        with self.lock:
            return sorted({m for s in self.slots.values() for m in (s["primary"], s["secondary"]) if m})

    def status(self) -> dict:
        now = time.monotonic()
        with self.lock:
            return {"fdu": self.addr, "heartbeat_ms": self.heartbeat_ms, "misses": self.misses, "ttl_s": self.ttl_s,
                    "slots": {k: dict(v) for k, v in self.slots.items()}, "spares": list(self.spares),
                    "fenced": sorted(self.fenced), "beats": dict(self.beats), "lease_ignored": dict(self.lease_ignored),
                    "max_gap_ms": {i: round(g * 1e3, 1) for i, g in self.max_gap.items()},
                    "silent_ms": {i: round((now - t) * 1e3, 1) for i, t in self.last_seen.items()},
                    "events": list(self.events)}

    def beat_request(self, inst: str, to: str | None) -> None:
        with AgentClient(self.testbed, inst, timeout=5.0) as a:
            a.request("heartbeat", to=to, every_ms=self.heartbeat_ms, name=inst)
        (self.beating.add if to else self.beating.discard)(inst)

    # ---- detection ----
    def _receive(self) -> None:
        while not self.stop_ev.is_set():
            try:
                data, _ = self.sock.recvfrom(256)
            except socket.timeout:
                continue
            except OSError:
                return
            got = parse_beat(data)
            if got is None:
                continue
            _, inst = got
            now = time.monotonic()
            last = self.last_seen.get(inst)
            if last is not None and self.beats.get(inst):
                # the longest silence a live agent had: how close the detector came to a false alarm
                self.max_gap[inst] = max(self.max_gap.get(inst, 0.0), now - last)
            self.last_seen[inst] = now
            self.beats[inst] = self.beats.get(inst, 0) + 1
            self.stranded.discard(inst)

    def _unread(self) -> int:
        """Bytes of beats the socket holds that the receiver has not read yet."""
        buf = array.array("i", [0])
        fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, buf)
        return buf[0]

    def _monitor(self) -> None:
        limit = self.misses * self.heartbeat_ms / 1e3
        tick = max(self.heartbeat_ms / 2e3, 0.001)
        while not self.stop_ev.wait(tick):
            now = time.monotonic()
            for slot, s in list(self.slots.items()):
                if slot in self.planned:
                    continue                  # a failback moves it: its primary changes by plan
                p = s["primary"]
                seen = self.last_seen.get(p)
                if seen is None or now - seen <= limit:
                    continue
                # this process stalled (the interpreter lock, a long request) with beats waiting
                # in the socket: they are read first, so the stall is not taken for a silence
                try:
                    if self._unread():
                        continue
                except OSError:
                    return                    # the socket is closed: stopping
                self.suspect(p, "heartbeat", (now - seen) * 1e3)

    def _member_event(self, kind: str, cluster: str, inst: str) -> None:
        """A membership that ended: its lease expired (the agent stopped renewing it), or the
        agent left (share_stop revokes it: a new secondary's sharing restarts that way). Only
        an instance whose heartbeats are late too is failed over: one that still beats left
        on purpose, or lost etcd but not the data plane (the switches still follow its record);
        a silent one is failed over here, or by the heartbeat monitor, whichever comes first."""
        if kind != "DELETE":
            return
        seen = self.last_seen.get(inst)
        silent_ms = (time.monotonic() - seen) * 1e3 if seen else None
        if silent_ms is not None and silent_ms <= self.misses * self.heartbeat_ms:
            with self.lock:
                self.lease_ignored[inst] = self.lease_ignored.get(inst, 0) + 1
            return
        self.suspect(inst, "lease", silent_ms)

    def suspect(self, inst: str, by: str, silent_ms: float | None) -> None:
        """A primary that fell silent (or lost its lease) is failed over, once."""
        with self.lock:
            slot = next((k for k, s in self.slots.items() if s["primary"] == inst), None)
            if slot is None or slot in self.planned or inst in self.failing or self.stop_ev.is_set():
                return
            if not self.slots[slot]["secondary"]:
                # nobody to fail over to (no spare was left): said once, until it beats again
                if inst not in self.stranded:
                    self.stranded.add(inst)
                    self.events.append({"slot": slot, "failed": inst, "by": by, "at": time.time(),
                                        "silent_ms": round(silent_ms, 1) if silent_ms is not None else None,
                                        "outcome": "no secondary to fail over to"})
                return
            self.failing.add(inst)
        threading.Thread(target=self._fail_over, args=(slot, inst, by, silent_ms), daemon=True,
                         name=f"failover-{inst}").start()

    # ---- promotion ----
    def _fail_over(self, slot: str, failed: str, by: str, silent_ms: float | None) -> None:
        t0 = time.monotonic()
        ev = {"slot": slot, "failed": failed, "by": by, "at": time.time(),
              "silent_ms": round(silent_ms, 1) if silent_ms is not None else None}

        def mark(what):
            ev[what] = round((time.monotonic() - t0) * 1e3, 2)
        try:
            new = self.gs.take_over(slot, failed, known=self.known.get(slot))
            if new is None and self.known.get(slot):
                new = self.gs.take_over(slot, failed)     # what we knew was stale: read it once
            mark("record_ms")
            if new is None:
                ev["outcome"] = "the pair's record had changed: another detector failed it over"
                return
            primary = new["primary"]
            ev["promoted"] = primary
            with self.lock:
                self.slots[slot] = {"primary": primary, "secondary": None}
            ev["fence"] = self._fence(failed)
            mark("fenced_ms")
            with AgentClient(self.testbed, primary, timeout=PROMOTE_TIMEOUT_S) as a:
                got = a.request("replica_promote", src=registry.as_seen_by(failed, self.testbed, primary), filter="all")
            ev["entries"] = got.get("entries", 0)
            mark("promoted_ms")
            self.ctl.steer.point(Filter(), [primary])
            mark("steered_ms")
            ev["outcome"] = "failed over"
            with self.lock:
                self.events.append(ev)        # recovered: what follows is the new secondary
            self.record(slot, failed, primary, None)
            with AgentClient(self.testbed, primary, timeout=PROMOTE_TIMEOUT_S) as a:
                a.request("share_drop", member=registry.as_seen_by(failed, self.testbed, primary))
            ev["new_secondary"] = self._new_secondary(slot, primary, failed, ev)
            mark("secondary_ms")
        except Exception as e:
            ev["error"] = f"{type(e).__name__}: {e}"
        finally:
            try:
                self.refresh()
            except NfxError:
                pass
            with self.lock:
                self.failing.discard(failed)
                if not any(e is ev for e in self.events):
                    self.events.append(ev)

    def _fence(self, inst: str) -> str:
        """Its gate drops everything, written through its pins (its agent may be stopped)."""
        try:
            inst_there, tb = registry.split_instance(inst)
            Gate(open_node(registry.load(tb or self.testbed).nf(inst_there))).fence()
        except (NfxError, OSError) as e:
            return f"not fenced: {e}"      # its program and pins are gone: nothing left to forward
        with self.lock:
            self.fenced.add(inst)
        return "fenced"

    def _new_secondary(self, slot: str, primary: str, failed: str, ev: dict) -> str | None:
        """A spare takes the failed instance's place in the cluster: the new primary shares with
        it (its base snapshot first), and it stands by in the pair's record."""
        with self.lock:
            spare = self.spares.pop(0) if self.spares else None
        if spare is None:
            # nobody to stand by: the primary stops sending batches to the failed instance
            with AgentClient(self.testbed, primary, timeout=PROMOTE_TIMEOUT_S) as a:
                a.request("share_stop")
            return None
        self.share_pair(primary, spare)
        if self.gs.set_secondary(slot, primary, spare) is None:
            ev["secondary_note"] = "the pair's record changed meanwhile"
        with self.lock:
            self.slots[slot]["secondary"] = spare
        self.beat_request(spare, self.addr)
        self.record(slot, failed, primary, spare)
        return spare

    def share_pair(self, primary: str, secondary: str) -> None:
        """The primary shares with `secondary` alone from now on, its base snapshot first (the
        secondary's sync: share_start returns once every piece is in); and the secondary with it."""
        cluster = self._cluster_of(primary)
        args = {"batch": self.batch, "idle_ms": self.idle_ms, "etcd": self.etcd_url, "cluster": cluster,
                "ttl_s": self.ttl_s, "send_ms": self.send_ms}
        with AgentClient(self.testbed, primary, timeout=PROMOTE_TIMEOUT_S) as a:
            a.request("share_stop")
            a.request("share_start", members=[registry.as_seen_by(secondary, self.testbed, primary)], **args)
        with AgentClient(self.testbed, secondary, timeout=PROMOTE_TIMEOUT_S) as a:
            a.request("share_stop")
            a.request("share_start", members=[registry.as_seen_by(primary, self.testbed, secondary)], **args)

    def _cluster_of(self, inst: str) -> str:
        clusters = registry.load(self.testbed).clusters_in_force()
        return next((c for c, ms in clusters.items() if inst in ms), "failover")

    def record(self, slot: str, failed: str, primary: str, secondary: str | None) -> None:
        """The registry follows: the failed instance leaves its cluster, the new secondary joins."""
        rec = registry.load(self.testbed)
        sh = rec.get("sharing") or {}
        for c, ms in (sh.get("clusters") or {}).items():
            if primary in ms:
                sh["clusters"][c] = [m for m in ms if m != failed] + ([secondary] if secondary and secondary not in ms else [])
        fo = rec.setdefault("failover", {})
        fo.setdefault("pairs", {})[slot] = [primary, secondary]
        with self.lock:
            fo["fenced"] = sorted(self.fenced)
        rec.save()


def parse_body(body: dict) -> dict:
    """POST /failover {on: true, etcd, pairs: {slot: [primary, secondary]}, spares, heartbeat_ms,
    misses, ttl_s, batch, idle_ms}, checked."""
    pairs = body.get("pairs")
    if not isinstance(pairs, dict) or not pairs or not all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in pairs.values()):
        raise BadInput("POST /failover needs pairs: {slot: [primary, secondary]}")
    spares = body.get("spares") or []
    if not isinstance(spares, list) or not all(isinstance(x, str) for x in spares):
        raise BadInput("spares: a list of instance names")
    hb, misses, ttl = body.get("heartbeat_ms", 10), body.get("misses", 3), body.get("ttl_s", 2)
    if not isinstance(hb, (int, float)) or isinstance(hb, bool) or not 1 <= hb <= 10_000:
        raise BadInput(f"heartbeat_ms is 1..10000, not {hb!r}")
    if not isinstance(misses, int) or isinstance(misses, bool) or not 1 <= misses <= 1000:
        raise BadInput(f"misses is 1..1000, not {misses!r}")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= 3600:
        raise BadInput(f"ttl_s is 1..3600 (etcd leases are whole seconds), not {ttl!r}")
    if not isinstance(body.get("etcd"), str):
        raise BadInput("POST /failover needs etcd: the URL the cluster uses")
    send_ms = body.get("send_ms", 0.0)
    if not isinstance(send_ms, (int, float)) or isinstance(send_ms, bool) or not 0 <= send_ms <= 1000:
        raise BadInput(f"send_ms is 0..1000, not {send_ms!r}")
    return {"etcd_url": body["etcd"], "pairs": pairs, "spares": spares, "heartbeat_ms": hb, "misses": misses,
            "ttl_s": ttl, "batch": int(body.get("batch", 30)), "idle_ms": float(body.get("idle_ms", 200)),
            "send_ms": send_ms}
