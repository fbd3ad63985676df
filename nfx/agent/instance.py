"""The NF instance an agent serves. The testbed's registry is read when the agent starts: the
instance's netns, pins, wiring and release interface and the token are fixed when it is built.
The other instances (their peer slots and management addresses) change when one is added or
removed (nfx nf add|remove): `peers()` reads the record again when it changed. The pinned
maps are reopened whenever a hot upgrade re-pins them."""
import logging
import os
import threading
import time
from pathlib import Path

from .. import layout as L
from ..errors import NfxError, NotFound
from ..gate import Releaser
from ..loader import netns
from .. import registry
from ..nfs import nf_class
from .protocol import PORT

log = logging.getLogger("nfx.agent")


class Instance:
    adoptions = 0

    def __init__(self, testbed: str, instance: str, port: int | None = None):
        self._rec_stamp = _stamp(testbed)      # before the read: a change meanwhile is read again
        rec = registry.load(testbed)
        node = rec.get("nodes", {}).get(instance)
        nfs = [n for n, i in rec.get("nodes", {}).items() if i.get("role") == "nf"]
        if not node or node.get("role") != "nf":
            raise NotFound(f"no NF instance {instance!r} in testbed {testbed}",
                           hint=f"instances: {', '.join(nfs) or 'none'}")
        if "pin" not in node or "kind" not in node:
            raise NotFound(f"instance {instance} of {testbed} was never built (no pins recorded)")
        mg = rec.get("mgmt") or {}
        if instance not in mg.get("agents", {}):
            raise NotFound(f"testbed {testbed} has no management address for {instance}")
        if not rec.get("token"):
            raise NfxError(f"testbed {testbed} has no token (built by an older nfx)", hint="rebuild it")
        self.rec = rec                        # the peers' addresses, for push
        self.testbed, self.instance = testbed, instance
        self.kind, self.ns, self.pin = node["kind"], node["ns"], Path(node["pin"])
        self.wiring = node.get("wiring", [])
        self.release_if = node.get("release_if")
        self.peer_slots = node.get("peer_slots", {})
        self.addr = mg["agents"][instance]
        self.port = port or (node.get("agent") or {}).get("port") or PORT
        self._token = rec["token"].encode()
        self.started = time.time()
        self.lock = threading.Lock()          # serialises mark/filter writes (gate config)
        self.nf = None

    def peers(self) -> dict:
        """The testbed's record as it is now (read again only when the file changed): for the
        other instances' tx slots (self.peer_slots) and addresses."""
        stamp = _stamp(self.testbed)
        if stamp is not None and stamp != self._rec_stamp:
            rec = registry.load(self.testbed)
            node = rec.get("nodes", {}).get(self.instance)
            if node is not None:
                self.rec, self.peer_slots, self._rec_stamp = rec, node.get("peer_slots", {}), stamp
        return self.rec

    def open(self) -> None:
        """Enter the instance's netns for good (threads made later inherit it) and reopen the
        pinned maps."""
        self._ns = netns.enter(self.ns)
        self._ns.__enter__()
        self._adopt()
        self.layout = L.layout_hash(self.kind)
        if not (self.pin / "prog").exists():
            log.warning("no pinned program at %s: the instance may not be attached", self.pin / "prog")
        elif self.release_if:
            try:
                Releaser.prepare(self.nf, self.ns, self.release_if)
            except Exception as e:      # noqa: BLE001 -- a move prepares it again, and fails saying why
                log.warning("the release path of %s is not ready: %s", self.instance, e)

    def _pins(self) -> dict[str, int]:
        """Pin name -> inode: a pin replaced by another object gets another inode."""
        out = {}
        try:
            names = os.listdir(self.pin)
        except OSError:
            return out
        for n in names:
            try:
                out[n] = os.stat(self.pin / n).st_ino
            except OSError:
                pass
        return out

    def _adopt(self) -> None:
        pins = self._pins()
        self.nf = nf_class(self.kind).open(self.instance, self.pin)
        self._pinned = pins
        self.adoptions += 1
        self._adopted()

    def _adopted(self) -> None:
        """After the maps were (re)opened: each op family drops what it held of the old ones."""

    def _current(self) -> None:
        """Re-adopt the pins when they changed under us (a hot upgrade re-pins maps and program)."""
        if self._pins() == self._pinned:
            return
        with self.lock:
            if self._pins() != self._pinned:
                log.info("pins under %s changed: re-adopting the instance's maps", self.pin)
                self._adopt()


def _stamp(testbed: str) -> tuple[int, int] | None:
    """When the testbed's record was last written (a save replaces the file: a new inode)."""
    try:
        st = registry.path(testbed).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino
