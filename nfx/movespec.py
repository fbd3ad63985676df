"""What a move may ask for, shared by the controller and the agents: the guarantees, the
optimisations and their parsing, and the emulated data link between instances."""
from .errors import BadInput

GUARANTEES = ("ng", "lf", "op")
OPTIMISATIONS = ("pz", "ll", "er", "ov", "dt")


def parse_opts(text: str | None) -> set[str]:
    opts = {o.strip().lower() for o in (text or "").replace("|", ",").split(",") if o.strip()}
    bad = opts - set(OPTIMISATIONS)
    if bad:
        raise BadInput(f"unknown optimisation {sorted(bad)}: use pz, ll, er, ov, dt (comma-separated)")
    return opts


def parse_data_link(req: dict) -> tuple[float, float]:
    """A move request's emulated data link between instances: (one-way delay ms, rate Mbit/s)."""
    try:
        d, r = float(req.get("data_delay_ms") or 0.0), float(req.get("data_rate_mbit") or 0.0)
    except (TypeError, ValueError):
        raise BadInput("data_delay_ms and data_rate_mbit are numbers") from None
    if not (0 <= d <= 10_000 and 0 <= r <= 100_000):
        raise BadInput("data_delay_ms must be 0..10000 and data_rate_mbit 0..100000 (0: no emulated "
                       "delay or rate limit)")
    return d, r
