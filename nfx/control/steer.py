"""Steering a filter's flows between NF instances on a testbed's switches, in one step or in
DiST's two phases (duplicate to source and destination, cut with an in-band control packet,
then destination only), and sending that control packet (IBC) into the flow's path."""
import socket
import struct
import threading
from pathlib import Path

from .. import layout as L
from ..errors import BadInput, NfxError, NotFound
from ..flows import be_to_ip
from ..loader import netns
from ..state.filter import Filter
from ..testbed import state as tbstate
from .switch import Match, Rule, Switch

PRIO_TOP = 999      # move rules sit above the testbed's defaults (1000, 2000); newer ones higher


class Steering:
    """The switches of one testbed, seen as: which instance gets a filter's flows."""

    def __init__(self, testbed: str):
        self.rec = tbstate.load(testbed)
        self.sw: dict[str, Switch] = {}
        self.host_port: dict[str, str] = {}     # switch -> its host-facing port
        self.host_of: dict[str, str] = {}       # switch -> host node
        for node, info in self.rec["nodes"].items():
            if info["role"] != "switch":
                continue
            self.sw[node] = Switch.open(node, info["ns"], Path(info["pin"]))
            for peer, ifname in info["ifaces"].items():
                if self.rec["nodes"][peer]["role"] == "host":
                    self.host_port[node], self.host_of[node] = ifname, peer
        if not self.sw:
            raise NfxError(f"testbed {testbed} has no switches to steer (topology {self.rec['topology']})")
        self.lock = threading.Lock()
        self.active: dict[str, list[tuple[str, int]]] = {}    # filter text -> (switch, rule id)
        # rules an earlier controller left (moves stay in force): the next ones go above them
        prios = [r.prio for s in self.sw.values() for r in s.rules() if r.kind == "wild" and r.prio < PRIO_TOP + 1]
        self.next_prio = min(prios + [PRIO_TOP + 1]) - 1

    def _port(self, sw: str, nf: str) -> str:
        return self.rec["nodes"][sw]["ifaces"][nf]

    def _side(self, sw: str) -> int:
        # the switch in front of the inside host (the one with a gateway) carries the inside side
        return L.SIDE_IN if "gen_if" in self.rec["nodes"][self.host_of[sw]] else L.SIDE_OUT

    def point(self, flt: Filter, nfs: list[str], outside_keys: list | None = None) -> None:
        """Send the filter's flows to `nfs` (two instances: duplicate). On the inside switch
        the filter matches as written; on the outside switch return traffic is matched by
        `outside_keys` (exact, e.g. a NAT's public tuples) or, without them, by the filter
        reversed. Replaces the filter's previous rules without a gap: new rules go in above
        the old, then the old go."""
        with self.lock:
            new = []
            prio = self.next_prio
            self.next_prio -= 1
            for name, s in self.sw.items():
                out = [self._port(name, nf) for nf in nfs]
                inside = self._side(name) == L.SIDE_IN
                if not inside and outside_keys is not None and not flt.everything:
                    for k in outside_keys:
                        new.append((name, s.add_exact(k, Rule(output=out))))
                    continue
                m = _match(flt, self.host_port[name], reverse=not inside)
                new.append((name, s.add_wild(m, Rule(output=out), prio=prio)))
            old = set(self.active.get(flt.text, []))
            # and any move rule with the same match that an earlier controller installed
            mine = {rid for _, rid in new}
            for name, s in self.sw.items():
                m = _match(flt, self.host_port[name], reverse=self._side(name) != L.SIDE_IN)
                for r in s.rules():
                    if r.kind == "wild" and r.prio <= PRIO_TOP and r.id not in mine and r.match == m:
                        old.add((name, r.id))
            self.active[flt.text] = new
            for name, rid in old - set(new):
                self._remove(name, rid)

    def _remove(self, name: str, rid: int) -> None:
        # an exact rule whose key was re-added has been repointed, and its old id freed
        try:
            self.sw[name].remove(rid)
        except (BadInput, NotFound):
            pass

    def ibc(self, side: int, key: L.FlowKey, epoch: int) -> None:
        """Send the IBC from the host in front of `side`, so it enters the switch on the same
        port, in the same queue, as the flow's own packets: the cut is the same in both copies."""
        sw = next(n for n in self.sw if self._side(n) == side)
        host = self.rec["nodes"][self.host_of[sw]]
        frame = ibc_frame(key, bytes.fromhex(host["mac"].replace(":", "")), epoch)
        with netns.enter(host["ns"]):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            try:
                s.bind((host["ifname"], 0))
                s.send(frame)
            finally:
                s.close()

    def forget(self, flt: Filter) -> None:
        with self.lock:
            for name, rid in self.active.pop(flt.text, []):
                self._remove(name, rid)


def _match(flt: Filter, in_port: str, reverse: bool) -> Match:
    def prefix(p):
        net, mask = p
        if not mask:
            return None
        bits = bin(struct.unpack(">I", struct.pack("<I", mask))[0]).count("1")
        return f"{be_to_ip(net)}/{bits}"

    def port(r):
        return r[0] if r[0] == r[1] else 0

    src, dst = prefix(flt.src), prefix(flt.dst)
    sp, dpt = port(flt.sport), port(flt.dport)
    if reverse:
        src, dst, sp, dpt = dst, src, dpt, sp
    return Match(in_port=in_port, src=src, dst=dst, sport=sp, dport=dpt, proto=flt.proto)


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF


def ibc_frame(key: L.FlowKey, src_mac: bytes, epoch: int) -> bytes:
    """A packet of the flow (its 5-tuple, so every rule and mark treats it as the flow), told
    apart by TOS NFX_TOS_IBC and a payload starting with NFX_IBC_MAGIC. Checksums are valid."""
    payload = struct.pack("!II", L.IBC_MAGIC, epoch)
    sa, da = struct.pack("<I", key.saddr), struct.pack("<I", key.daddr)
    sp, dp = struct.pack("<H", key.sport), struct.pack("<H", key.dport)     # already network order
    if key.proto == 6:
        l4 = sp + dp + struct.pack("!IIBBHHH", 0, 0, 5 << 4, 0x10, 65535, 0, 0) + payload
        ck_at = 16
    else:
        l4 = sp + dp + struct.pack("!HH", 8 + len(payload), 0) + payload
        ck_at = 6
    pseudo = sa + da + struct.pack("!BBH", 0, key.proto, len(l4))
    ck = _csum(pseudo + l4) or 0xFFFF
    l4 = l4[:ck_at] + struct.pack("!H", ck) + l4[ck_at + 2:]
    ip = struct.pack("!BBHHHBBH", 0x45, L.TOS_IBC, 20 + len(l4), 0, 0x4000, 64, key.proto, 0) + sa + da
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return bytes.fromhex("020000000001") + src_mac + b"\x08\x00" + ip + l4
