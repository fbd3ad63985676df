"""The agent's gate ops: mark, unmark, marks, filter (nfx/agent/PROTOCOL.md): the flows' marks and
the wildcard filters that decide, per packet, whether the NF processes it, buffers it, redirects
it to a peer or hands it to the controller."""
import ctypes as ct
import socket

import numpy as np

from .. import layout as L
from ..errors import BadInput
from ..flows import be_to_ip, key_fields, make_key, reverse
from ..gate import Gate, check_ports
from .. import filter as F
from ..state import ops
from .protocol import ACTIONS, action_num
from .transport import arg_filter, arg_int

ACTION_NAMES = {v: k for k, v in ACTIONS.items()}
KEY_BYTES = ct.sizeof(L.FlowKey)


def _prefix_str(addr: int, mask: int) -> str | None:
    return f"{be_to_ip(addr)}/{bin(mask).count('1')}" if mask else None


class GateOps:
    """Mixed into the agent (nfx/agent/server.py): needs the instance (nfx/agent/instance.py)."""

    def _flow_keys(self, req) -> np.ndarray:
        """16-byte flow keys (as a uint8 matrix) named by `flows` and/or selected by `filter`,
        each with its other direction (NAT: the translated key)."""
        out = []
        flows = req.get("flows") or []
        if not isinstance(flows, list):
            raise BadInput("flows: a list of {src, dst, sport, dport, proto}")
        for f in flows:
            if not isinstance(f, dict):
                raise BadInput(f"flows: {f!r} is not an object")
            try:
                k = make_key(f["src"], f["dst"], int(f.get("sport", 0)), int(f.get("dport", 0)), f.get("proto", 0))
            except KeyError as e:
                raise BadInput(f"flows: {f} lacks {e}") from None
            except (TypeError, ValueError):
                raise BadInput(f"flows: bad port in {f}") from None
            out.append(bytes(k))
            if self.kind == "nat":
                for t in ("nat_fwd", "nat_rev"):
                    e = self.nf.maps[t].get(k)
                    if e is not None:
                        out.append(bytes(e.peer))
            else:
                out.append(bytes(reverse(k)))
        keys = np.frombuffer(b"".join(out), dtype=np.uint8).reshape(-1, KEY_BYTES) if out else \
            np.zeros((0, KEY_BYTES), dtype=np.uint8)
        if req.get("filter") is not None:
            flt = arg_filter(req)
            parts = [keys]
            for c in ops.export(self.nf, ("per-flow",), flt):
                if c.key_size != KEY_BYTES:
                    continue
                k = np.frombuffer(c.keys, dtype=np.uint8).reshape(c.count, KEY_BYTES)
                parts.append(k)
                if c.table in ("nat_fwd", "nat_rev"):
                    v = np.frombuffer(c.values, dtype=np.uint8).reshape(c.count, -1)[:, :KEY_BYTES]
                    parts.append(v)
                elif self.kind != "nat":
                    rk = k.copy().view(F.FLOW_DTYPE).reshape(c.count)
                    sw = rk.copy()
                    sw["saddr"], sw["daddr"] = rk["daddr"], rk["saddr"]
                    sw["sport"], sw["dport"] = rk["dport"], rk["sport"]
                    parts.append(sw.view(np.uint8).reshape(c.count, KEY_BYTES))
            keys = np.concatenate(parts)
        if len(keys):
            keys = np.unique(keys, axis=0)
        return keys

    @staticmethod
    def _keys_array(keys: np.ndarray):
        return (L.FlowKey * len(keys)).from_buffer(bytearray(keys.tobytes()))

    def op_mark(self, sock, r, req) -> dict:
        action = action_num(req.get("action", "process"))
        peer = arg_int(req, "peer", 0, 0, 0xFFFFFFFF)
        tag = arg_int(req, "tag", 0, 0, 0xFFFFFFFF)
        epoch = arg_int(req, "epoch", 0, 0, 0xFFFFFFFF)
        keys = self._flow_keys(req)
        with self.lock:
            Gate(self.nf).mark(self._keys_array(keys), action, epoch=epoch, peer=peer, tag=tag)
        return {"marked": len(keys), "action": ACTION_NAMES[action]}

    def op_unmark(self, sock, r, req) -> dict:
        with self.lock:
            done = Gate(self.nf).unmark(None if req.get("all") else self._keys_array(self._flow_keys(req)))
        return {"unmarked": done}

    def op_marks(self, sock, r, req) -> dict:
        limit = arg_int(req, "limit", 10000, 0, 1 << 24)
        gate = Gate(self.nf)
        held = gate.marks()
        n = len(held)
        marks = []
        for k, v in list(held.items())[:limit]:
            m = {f: getattr(v, f) for f, _ in L.Mark._fields_ if f not in ("lock", "pad")}
            m["action"] = ACTION_NAMES.get(v.action, v.action)
            marks.append({"flow": key_fields(L.FlowKey.from_buffer_copy(k)), **m})
        filters = [{"slot": slot, "src": _prefix_str(f.saddr, f.smask), "dst": _prefix_str(f.daddr, f.dmask),
                    "sport": socket.ntohs(f.sport), "dport": socket.ntohs(f.dport), "proto": f.proto,
                    "action": ACTION_NAMES.get(f.action, f.action), "bidir": bool(f.flags & L.FILTER_BIDIR),
                    "peer": f.peer, "tag": f.tag} for slot, f in gate.filters().items()]
        g = gate.cfg()
        return {"count": n, "marks": marks, "filters": filters, "gate": {"marks": g.marks, "filters": g.filters}}

    def op_filter(self, sock, r, req) -> dict:
        slot = arg_int(req, "slot", None, 0, L.MAX_FILTERS - 1) if "slot" in req else None
        if slot is None:
            raise BadInput(f"filter needs 'slot' (0..{L.MAX_FILTERS - 1})")
        if req.get("clear"):
            with self.lock:
                Gate(self.nf).clear_filter(slot)
            return {"slot": slot, "cleared": True}
        flt = arg_filter(req)
        check_ports(flt)          # refused before anything changes
        action = action_num(req.get("action", "process"))
        bidir = bool(req.get("bidir", True))
        peer, tag = arg_int(req, "peer", 0, 0, 0xFFFFFFFF), arg_int(req, "tag", 0, 0, 0xFFFFFFFF)
        with self.lock:
            Gate(self.nf).set_filter(slot, flt, action, peer=peer, tag=tag, bidir=bidir)
        return {"slot": slot, "filter": flt.text, "action": ACTION_NAMES[action], "bidir": bidir}
