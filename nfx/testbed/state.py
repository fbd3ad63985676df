"""Moved to nfx/registry.py; this name stays until every caller imports the registry."""
from ..registry import *  # noqa: F401,F403
from ..registry import DIR, NAME_RE, Testbed, check_name, load, names, new, orphaned, path, pin_root, remove  # noqa: F401

Record = Testbed
