"""The release path's tc transport (nfx/loader/transmit.py), for kernels that refuse live frames.

The live transport runs the instance's program on an empty frame named as received on the
release veth (rl0). Here the program runs attached to rl0 (native XDP: the testbed's builder
attaches it there, and KickPath makes sure), and a tc program
run by skb test runs sends an empty frame out of rl0's peer for every slot to release: rl0's
NAPI hands each to the program as the live run did. The program grows or shrinks the frame to
the packet it takes from its slot, and a frame taken off an skb leaves no room to grow
(veth copies it into a buffer of its own size), so the empty frame is MAX_PKT long and both
ends of the veth carry it (MTU MAX_PKT).

The frames are received in the softirq that the sends raise, which may run after the test run
has returned: `settle` waits until the release's cursor stops moving. Each frame
takes a slot when it arrives, so a frame still in flight must never be sent again."""
import os
import time

from . import layout as L
from .errors import BpfError
from .loader import attach, bpfsys, netlink, netns, transmit

STILL_S = 0.002        # the cursor unmoved this long, and short of its target: frames lost on the way
MOST_S = 1.0           # a cursor still moving after this: given up on (the caller sees how far)


# (netns inode, release veth's ifindex, program id) -> its peer's ifindex: the release veth
# set up once for a program. Checking it each time took 2.5-4.4 ms of netlink dumps (pyroute2)
# in every move, at each instance that holds packets; a new program (an upgrade) or a new netns
# is a new key.
_ready: dict[tuple, int] = {}


def ready(ns: str, release_if: str, prog_fd: int) -> int:
    """The release veth ready for kicks (both ends' MTU MAX_PKT, the NF's program on it);
    returns its peer's ifindex, where the kicks go out."""
    want, _ = bpfsys.prog_info(prog_fd)
    key = (netns.inode(ns), netns.ifindex(release_if, ns), want.id)
    peer = _ready.get(key)
    if peer is None:
        peer = _ready[key] = _set_up(ns, release_if, prog_fd, want.id)
    return peer


def _set_up(ns: str, release_if: str, prog_fd: int, prog_id: int) -> int:
    with netlink.Netlink(ns) as nl:
        idx = nl.index(release_if)
        [link] = nl.ipr.get_links(idx)
        peer = link.get_attr("IFLA_LINK")
        if not peer:
            raise BpfError(f"{release_if} in {ns} is no veth: the tc release transport sends from its peer")
        for i in (peer, idx):
            [ln] = nl.ipr.get_links(i)
            if ln.get_attr("IFLA_MTU") < L.MAX_PKT:
                nl.ipr.link("set", index=i, mtu=L.MAX_PKT)
    if attach.xdp_attachments(ns).get(release_if, (None,))[0] != prog_id:
        attach.attach_xdp_fd(ns, release_if, prog_fd, allow_generic=False)
    return peer


class KickPath:
    def __init__(self, ns: str, release_if: str, prog_fd: int):
        self.ns, self.release_if = ns, release_if
        self.fd = transmit.kick_program(ready(ns, release_if, prog_fd))
        self.frame = bytes(L.MAX_PKT)

    def fire(self, n: int) -> None:
        """n empty frames to the program (in the instance's netns: the caller is there)."""
        bpfsys.prog_test_run_skb(self.fd, self.frame, repeat=n)

    @staticmethod
    def settle(cursor, start: int, target: int) -> int:
        """The cursor once it reached target (start + the frames sent) or stopped moving."""
        t0 = last_move = time.monotonic()
        seen = cursor()
        while (seen - start) & 0xFFFFFFFF < (target - start) & 0xFFFFFFFF:
            time.sleep(0.0001)
            now, c = time.monotonic(), cursor()
            if c != seen:
                seen, last_move = c, now
            elif now - last_move >= STILL_S or now - t0 >= MOST_S:
                break
        return seen

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
