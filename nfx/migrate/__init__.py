"""Moves, the controller's side: the generic move and its Mechanism interface (mechanism.py),
one module per mechanism (opennf.py, dist.py, dup.py, slim.py), the agents as endpoints (endpoint.py). A
mechanism is known once registered here; MECHANISMS lists the registered names."""
from ..movespec import GUARANTEES, MECHANISMS
from .dist import Dist
from .dup import Dup
from .mechanism import move, register
from .opennf import OpenNF
from .slim import Slim

register(OpenNF)
register(Dist)
register(Dup)
register(Slim)

__all__ = ["GUARANTEES", "MECHANISMS", "move", "register"]
