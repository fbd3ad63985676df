"""ctypes mirror of the layouts in bpf/include/: one module per header (nfx_<concern>.h ->
<concern>.py), all names re-exported here (`from nfx import layout as L; L.FlowKey`).
tests/bpf/test_layout.py checks every struct against what BCC parses from its own header."""
from . import bench, flow, gate, hsl, ids, keyread, move, nat, statelet, switch
from .bench import *      # noqa: F401,F403
from .flow import *       # noqa: F401,F403
from .gate import *       # noqa: F401,F403
from .hsl import *        # noqa: F401,F403
from .hashing import LAYOUT_HEADERS, layout_hash  # noqa: F401
from .ids import *        # noqa: F401,F403
from .keyread import *    # noqa: F401,F403
from .move import *       # noqa: F401,F403
from .nat import *        # noqa: F401,F403
from .statelet import *   # noqa: F401,F403
from .switch import *     # noqa: F401,F403

# header -> the module mirroring it
MODULES = {"nfx_flow.h": flow, "nfx_gate.h": gate, "nfx_move.h": move, "nfx_statelet.h": statelet,
           "nfx_nat.h": nat, "nfx_ids.h": ids, "nfx_switch.h": switch, "nfx_bench.h": bench,
           "nfx_hsl.h": hsl, "nfx_keyread.h": keyread}

# struct name -> mirror, over every header; the layout test walks this table
MIRRORS = {name: struct for m in MODULES.values() for name, struct in m.MIRRORS.items()}


def describe(struct) -> list[tuple[str, int, int]]:
    return [(name, getattr(struct, name).offset, getattr(struct, name).size) for name, _ in struct._fields_]
