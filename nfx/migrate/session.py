"""Moved to nfx/agent/sessions.py (a session runs in the agent); kept for old imports."""
from ..agent.sessions import FILTER_SLOT, SETTLE_S, MoveSession

__all__ = ["FILTER_SLOT", "SETTLE_S", "MoveSession"]
