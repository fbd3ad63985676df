"""SHarP's handover support layer (HSL) at an instance: the agent's half of a handover
(seeds/sharp-handover.txt, Sec. III; the controller's half is nfx/migrate/sharp.py). It talks to
the controller in band only: the gate passes the controller's messages (START_HO, END) to the
stack (nfx_nf.h, nfx_is_hsl), a packet socket per wiring port reads them here, and the answers
(ACK, DONE) go out of the same ports to the switches, which copy them to the controller.

- START_HO at the destination: begin a move session that buffers the handover's flows (its
  filter catches every flow, those not seen yet too), keeping the controller's tagged packets
  (ctrl_buff) apart from the switch's (sw_buff); ACK.
- START_HO at a source, once it has come on every side it was sent on (everything the switches
  sent before it has been processed): ACK, then push the state to the destination's agent (the
  state transfer SHarP leaves to the NF: nfx's push, as DiST's), tell it the state is in, delete
  it here, and say DONE (with what was sent) to the controller.
- END at the destination (on every side): the controller has sent all it held. With the state
  in from every source, the destination releases ctrl_buff, then sw_buff, in arrival order, and
  once the gate has let every flow go, ends the session and says DONE with its buffer figures."""
import logging
import select
import socket
import threading
import time

from .. import layout as L
from ..errors import BadInput
from ..filter import parse
from ..frames import hsl_message, parse_hsl_message
from ..state import ops
from ..state.tables import SCOPES
from .client import AgentClient

log = logging.getLogger("nfx.hsl")
HSL_OPS = ("hsl_state_in",)
ETH_P_IP = 0x0800
SETTLE_TIMEOUT_S = 30.0
SETTLE_POLL_S = 0.005


class HandoverPart:
    """One handover as this instance takes part in it."""

    def __init__(self, epoch: int, role: str, body: dict):
        self.epoch, self.role, self.body = epoch, role, body
        self.sides_seen: set[int] = set()
        self.ends: set[int] = set()
        self.state_from: set[str] = set()
        self.started = False
        self.draining = False


class HslOps:
    """Mixed into the agent (nfx/agent/server.py) with MoveOps (its sessions): needs the
    instance (nfx/agent/instance.py)."""

    _hsl_socks: "dict[str, socket.socket] | None" = None
    _handovers: "dict[int, HandoverPart] | None" = None

    def _adopted(self) -> None:
        super()._adopted()
        if self._hsl_socks is None:
            self._hsl_lock = threading.Lock()
            self._handovers = {}
            self._hsl_socks = {}
            for ifname in self.wiring:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
                s.bind((ifname, ETH_P_IP))
                self._hsl_socks[ifname] = s
            threading.Thread(target=self._hsl_listen, daemon=True, name="hsl").start()

    # ---- the wire ----
    def _hsl_listen(self) -> None:
        socks = {s.fileno(): (name, s) for name, s in self._hsl_socks.items()}
        while True:
            ready, _, _ = select.select(list(socks), [], [], 1.0)
            for fd in ready:
                name, s = socks[fd]
                try:
                    frame, addr = s.recvfrom(2048)
                except OSError:
                    continue
                if addr[2] == socket.PACKET_OUTGOING:
                    continue                       # our own ACK/DONE on its way out
                msg = parse_hsl_message(frame)
                if msg is None:
                    continue
                try:
                    self._hsl_message(name, *msg)
                except Exception as e:
                    log.exception("handover %d: message kind %d failed", msg[1], msg[0])
                    self._hsl_say(L.HslKind.DONE, msg[1], {"role": "?", "ok": False, "error": str(e)})

    def _hsl_say(self, kind: int, epoch: int, body: dict, side: int = L.SIDE_IN) -> None:
        """A message to the controller, out of the port on `side` (the switch there copies it up)."""
        ifname = self.wiring[side]
        s = self._hsl_socks[ifname]
        body = {"instance": self.instance, **body}
        s.send(hsl_message(kind, epoch, side, body, s.getsockname()[4]))

    def _hsl_message(self, ifname: str, kind: int, epoch: int, _side: int, body: dict) -> None:
        side = self.wiring.index(ifname)       # the port it came in by, whatever the sender wrote
        if kind == L.HslKind.START:
            self._hsl_start(epoch, side, body)
        elif kind == L.HslKind.END:
            self._hsl_end(epoch, side)

    # ---- START_HO ----
    def _hsl_start(self, epoch: int, side: int, body: dict) -> None:
        role = body.get("role")
        sides = set(body.get("sides") or [L.SIDE_IN])
        with self._hsl_lock:
            h = self._handovers.get(epoch)
            if h is None:
                h = self._handovers[epoch] = HandoverPart(epoch, role, body)
            h.sides_seen.add(side)
            if h.started or not sides <= h.sides_seen:
                return
            h.started = True
        if role == "dst":
            try:
                s = self._begin_session("dst", epoch, False, [], parse(body.get("filter")), 0)
                s.sharp = True
            except Exception as e:
                with self._hsl_lock:
                    self._handovers.pop(epoch, None)
                self._hsl_say(L.HslKind.ACK, epoch, {"role": "dst", "ok": False, "error": str(e)})
                return
            self._hsl_say(L.HslKind.ACK, epoch, {"role": "dst", "ok": True})
        elif role == "src":
            self._hsl_say(L.HslKind.ACK, epoch, {"role": "src", "ok": True})
            threading.Thread(target=self._hsl_push, args=(h,), daemon=True, name=f"hsl-push-{epoch}").start()
        else:
            raise BadInput(f"START_HO with role {role!r}")

    def _hsl_push(self, h: HandoverPart) -> None:
        """The source's state transfer, then DONE to the controller."""
        body = h.body
        flt = parse(body.get("filter"))
        scopes = tuple(body.get("scopes") or SCOPES)
        t0 = time.perf_counter()
        out = {"role": "src", "ok": False}
        try:
            # an emulated state transfer that takes longer (the paper's Fig. 7): the source waits
            time.sleep(float(body.get("state_delay_s", 0)))
            peer = AgentClient(self.testbed, body["dst"], ns=None, timeout=float(body.get("timeout", 30)))
            try:
                t = {}
                sent = peer.send_state(ops.export(self.nf, scopes, flt, stats=t), pipelined=True)
                peer.request("hsl_state_in", epoch=h.epoch, src=self.instance)
            finally:
                peer.close()
            deleted = ops.delete(self.nf, scopes, flt)
            out = {"role": "src", "ok": True, "chunks": sent["chunks"], "bytes": sent["bytes"],
                   "export_s": t.get("export_s", 0.0), "transfer_s": time.perf_counter() - t0,
                   "deleted": sum(deleted.values()) if isinstance(deleted, dict) else deleted}
        except Exception as e:
            # the destination is gone or refused: the state stays here, and the controller rolls back
            log.warning("handover %d: pushing the state to %s failed: %s", h.epoch, body.get("dst"), e)
            out["error"] = f"{type(e).__name__}: {e}"
        finally:
            with self._hsl_lock:
                self._handovers.pop(h.epoch, None)
        self._hsl_say(L.HslKind.DONE, h.epoch, out)

    # ---- at the destination: END, the state, the release ----
    def op_hsl_state_in(self, sock, r, req) -> dict:
        """A source's state is all in (it asks this after its push)."""
        epoch, src = int(req.get("epoch", 0)), req.get("src")
        with self._hsl_lock:
            h = self._handovers.get(epoch)
            if h is None or h.role != "dst":
                raise BadInput(f"no handover {epoch} to this instance")
            h.state_from.add(src)
        self._hsl_maybe_release(h)
        return {"epoch": epoch, "state_from": sorted(h.state_from)}

    def _hsl_end(self, epoch: int, side: int) -> None:
        with self._hsl_lock:
            h = self._handovers.get(epoch)
            if h is None or h.role != "dst":
                return
            h.ends.add(side)
        self._hsl_maybe_release(h)

    def _hsl_maybe_release(self, h: HandoverPart) -> None:
        with self._hsl_lock:
            ready = (not h.draining and set(h.body.get("sides") or [L.SIDE_IN]) <= h.ends
                     and set(h.body.get("srcs") or []) <= h.state_from)
            if ready:
                h.draining = True
        if not ready:
            return
        s = self.session
        if s is None or s.epoch != h.epoch:
            return
        # everything the controller held reached the gate before END (the same FIFO): once the
        # ring is read empty it is all in ctrl_buff, and ctrl_buff goes before sw_buff
        s.drain_when_read()
        threading.Thread(target=self._hsl_settle, args=(h,), daemon=True, name=f"hsl-settle-{h.epoch}").start()

    def _hsl_settle(self, h: HandoverPart) -> None:
        s = self.session
        out = {"role": "dst", "ok": False}
        try:
            t_end = time.monotonic() + SETTLE_TIMEOUT_S
            while not s.settled():
                if time.monotonic() > t_end:
                    raise TimeoutError(f"not settled after {SETTLE_TIMEOUT_S:g} s: {s.unsettled()}")
                # settled() reads every mark once its queues are empty: not too often, or it
                # takes the CPU from the release it waits for
                time.sleep(SETTLE_POLL_S)
            st = s.end()
            out = {"role": "dst", "ok": True, "stats": st}
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
            try:
                s.end()
            except Exception:
                pass
        finally:
            self.session = None
            with self._hsl_lock:
                self._handovers.pop(h.epoch, None)
        self._hsl_say(L.HslKind.DONE, h.epoch, out)
