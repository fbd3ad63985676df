"""The agent is composed of one part per job (nfx/agent/server.py): every op of the protocol has
its handler, and the agent's side of a move loads nothing of the controller's side."""
import subprocess
import sys

from nfx.agent.hsl import HSL_OPS
from nfx.agent.ops_move import MOVE_OPS
from nfx.agent.protocol import OPS
from nfx.agent.server import Agent
from nfx.agent.share import SHARE_OPS
from nfx.agent.heartbeat import HEARTBEAT_OPS
from nfx.agent.slim_dest import SLIM_OPS


def test_every_op_has_a_handler():
    every = OPS + MOVE_OPS + HSL_OPS + SLIM_OPS + SHARE_OPS + HEARTBEAT_OPS
    missing = [op for op in every if not callable(getattr(Agent, "op_" + op, None))]
    assert not missing and Agent.ops == every


def test_the_agent_loads_nothing_of_the_controller_side():
    out = subprocess.run([sys.executable, "-c", "import sys, nfx.agent.server; "
                          "print(' '.join(m for m in sys.modules if m.startswith('nfx.')))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "nfx.agent.dist_source" in out
    assert [m for m in out if m.startswith(("nfx.migrate", "nfx.control", "nfx.testbed", "nfx.cluster"))] == []
