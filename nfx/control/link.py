"""Moved to nfx/agent/link.py (the agents' transport uses it); kept for old imports. The same
objects, so `pair` still shares one link per end with every user in the process."""
from ..agent.link import DelayedConn, Link, pair, sleep_until

__all__ = ["DelayedConn", "Link", "pair", "sleep_until"]
