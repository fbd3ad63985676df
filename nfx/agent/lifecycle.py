"""Moved to nfx/procs/agents.py; this name stays until every caller imports procs."""
from ..procs.agents import *  # noqa: F401,F403
from ..procs.agents import AGENT_DIR, find, gone, is_agent, log_path, pid_of, spawn, start, status, stop, stop_all, \
    wait_gone, wait_ready  # noqa: F401
