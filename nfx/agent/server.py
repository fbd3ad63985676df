"""The agent: one process per NF instance, in the instance's netns (`python -m nfx.agent`). It
reopens the instance's pinned maps (the XDP program stays attached: the agent never compiles or
attaches anything) and serves the southbound API on the management network
(nfx/agent/PROTOCOL.md). It is made of one part per job:

    instance.py       the instance, from the registry; its pins, re-adopted after an upgrade
    transport.py      listening, token check, frames, dispatch to the ops
    ops_state.py      ping, info, stats, get, put, del, push
    ops_gate.py       mark, unmark, marks, filter
    ops_subscribe.py  subscribe (event streams, streams.py)
    ops_move.py       the move session's ops (sessions.py)
    dist_source.py    move_dist, DiST's source half
    dup_source.py     move_dup_push, the duplication baseline's snapshot
    slim_source.py    move_slim, SLiM's source half; slim_dest.py slim_in, its destination half
    hsl.py            SHarP's handover support layer (in-band START_HO/END, hsl_state_in)
    share.py          a cluster's batched sharing (sharer.py) and the replicas it feeds
    heartbeat.py      heartbeats to the failure detection unit (issue 14)"""
from . import transport
from .dist_source import DistSource
from .dup_source import DupSource
from .heartbeat import HEARTBEAT_OPS, HeartbeatOps
from .hsl import HSL_OPS, HslOps
from .instance import Instance
from .ops_gate import GateOps
from .ops_move import MOVE_OPS, MoveOps
from .ops_state import StateOps
from .ops_subscribe import SubscribeOps
from .protocol import OPS
from .slim_dest import SLIM_OPS, SlimDest
from .share import SHARE_OPS, ShareOps
from .slim_source import SlimSource
from .transport import Transport


class Agent(Transport, StateOps, GateOps, SubscribeOps, HslOps, MoveOps, DistSource, DupSource, SlimSource,
            SlimDest, ShareOps, HeartbeatOps, Instance):
    ops = OPS + MOVE_OPS + HSL_OPS + SLIM_OPS + SHARE_OPS + HEARTBEAT_OPS


def main(argv=None) -> None:
    transport.main(Agent, argv)
