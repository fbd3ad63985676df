"""Moved: the move ops to nfx/agent/ops_move.py, DiST's source half to nfx/agent/dist_source.py;
kept for old imports."""
from .ops_move import MOVE_OPS, MoveOps, enc

__all__ = ["MOVE_OPS", "MoveOps", "enc"]
