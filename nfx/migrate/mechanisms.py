"""Where the move lived before it was split (shim): nfx.migrate.mechanism (the generic move),
opennf.py, dist.py, and nfx.movespec (guarantees, options, the request and its metrics)."""
from ..movespec import (FIRE_WAIT_S, GUARANTEES, MECHANISMS, OPTIMISATIONS, QUIET_S, MoveMetrics,  # noqa: F401
                        MoveRequest, ibc_keys, ibc_synthetic, new_epoch, parse_data_link, parse_opts)
from .ctrlbuf import ControllerBuffer  # noqa: F401
from .dist import Dist, _fired  # noqa: F401
from .mechanism import REGISTRY, Ctx, Mechanism, move, register, wait_for  # noqa: F401
from .opennf import OpenNF, _early, _transfer  # noqa: F401
