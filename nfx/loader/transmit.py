"""How packets made by a test run leave: the two transports of the generator and the release path.

- `live`: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES. The XDP program runs on each frame
  as if received on `ingress_ifindex`, and its XDP_TX or XDP_REDIRECT really transmits.
- `tc`: an skb test run of a tc program that ends in bpf_clone_redirect, which really transmits
  (a clone of the skb, through the target's egress). The release path kicks an empty frame into
  the spare veth's peer, so the NF's own XDP program, attached to the spare veth, receives it
  there as the live run would have handed it over.

The kernel of this machine kind's build fc-v1300 (6.18.44, first seen 2026-12-07) refuses a live
run with EPERM, for root in the initial namespaces; fc-v1272 ran them. Plain test runs and
bpf_clone_redirect from an skb test run still work there. `mode()` asks the kernel once per
process (NFX_TX=live|tc picks one instead: for A/B runs, and for testing `tc` where `live` works).
"""
import os
import threading

from ..errors import BadInput, BpfError, KernelFeature
from . import bpfsys
from .image import INSN

ENV = "NFX_TX"
MODES = ("live", "tc")
LOOPBACK_IFINDEX = 1       # every netns's lo

_lock = threading.Lock()
_mode: str | None = None


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return INSN.pack(code, (src << 4) | dst, off, imm)


MOV64_IMM, CALL, EXIT = 0xB7, 0x85, 0x95
FN_CLONE_REDIRECT = 13
XDP_DROP = 1


def mode() -> str:
    """`live` or `tc`: NFX_TX if set, else what the kernel allows (asked once)."""
    global _mode
    with _lock:
        if _mode is None:
            want = os.environ.get(ENV, "").strip().lower() or "auto"
            if want not in ("auto",) + MODES:
                raise BadInput(f"{ENV} is live, tc or auto, not {want!r}")
            if want == "tc":
                _mode = "tc"
            elif live_frames_allowed():
                _mode = "live"
            elif want == "live":
                raise KernelFeature(f"{ENV}=live, but this kernel refuses live-frame test runs "
                                    f"(BPF_F_TEST_XDP_LIVE_FRAMES): unset {ENV} to send by tc")
            else:
                _mode = "tc"
        return _mode


def live_frames_allowed() -> bool:
    """One live run of a program that drops what it gets, named as received on lo."""
    fd = bpfsys.prog_load(bpfsys.PROG_TYPES["xdp"], _insn(MOV64_IMM, 0, imm=XDP_DROP) + _insn(EXIT),
                          "nfx_live_probe", b"GPL")
    try:
        bpfsys.prog_test_run(fd, bytes(60), repeat=1, live=True, ingress_ifindex=LOOPBACK_IFINDEX)
        return True
    except BpfError:         # EPERM here (fc-v1300); EINVAL on kernels before live frames (5.18)
        return False
    finally:
        os.close(fd)


def kick_program(ifindex: int) -> int:
    """A tc program that sends a clone of its skb out of `ifindex` (of the netns it is run in)
    and returns bpf_clone_redirect's result (0, or a negative errno): run by an skb test run on
    an empty frame, it hands the frame to ifindex's veth peer's XDP program, as received there."""
    insns = (_insn(MOV64_IMM, 2, imm=ifindex) + _insn(MOV64_IMM, 3, imm=0) +
             _insn(CALL, imm=FN_CLONE_REDIRECT) + _insn(EXIT))
    return bpfsys.prog_load(bpfsys.PROG_TYPES["tc"], insns, "nfx_kick", b"GPL")
