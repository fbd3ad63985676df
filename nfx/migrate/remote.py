"""Where the move endpoint lived before the split (shim): nfx.migrate.endpoint."""
from .endpoint import DistRun, Remote  # noqa: F401
