"""Moved to nfx/frames.py (a base module: agents build these packets too); kept for old imports."""
from ..frames import TRIGGER_PORT, ibc_frame, trigger_frame

__all__ = ["TRIGGER_PORT", "ibc_frame", "trigger_frame"]
