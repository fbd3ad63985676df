"""Moved to nfx.upgrade (package: convert, delta, merge, swap) and nfx.loader.swap; this shim
keeps the old names for code and tests not yet switched. `upgrade` here also restarts the
instance's agent, as it did (the CLI now does that itself: cli.nf.restart_stale_agent)."""
from ..cli.nf import restart_stale_agent
from ..upgrade import CONVERSIONS, GUARANTEES, Conversion, by_field, parse_defines  # noqa: F401
from ..upgrade import upgrade as _upgrade
from ..upgrade.delta import Table as _Table  # noqa: F401
from ..upgrade.merge import Merger as _Merger  # noqa: F401


def upgrade(testbed: str, instance: str, *args, restart_agent: bool = True, **kw) -> dict:
    r = _upgrade(testbed, instance, *args, **kw)
    restart_stale_agent(testbed, instance, r, restart_agent)
    return r
