"""Moved to nfx/procs/controller.py; this name stays until every caller imports procs."""
from ..procs.controller import *  # noqa: F401,F403
from ..procs.controller import call, log_path, moves_path, remove_logs, start, stop  # noqa: F401
