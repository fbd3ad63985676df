"""An orchestration policy: a TOML file of an instance's budget, the thresholds that make it
overloaded, underloaded or the testbed imbalanced, the hysteresis that keeps those from
flapping, and how often the monitor samples. Everything omitted takes its default; anything
unknown, mistyped, out of range or contradictory is refused (BadInput naming the field) before
anything runs.

    [instance]
    capacity_pps = 150000      # an instance's budget: a policy value, so any machine can show the loop
    [thresholds]
    overload = 0.9             # pps above this fraction of capacity
    underload = 0.3            # pps below this fraction of capacity
    imbalance = 0.8            # one instance holds at least this share of the testbed's flows (or pps)
    imbalance_basis = "flows"  # "flows" or "pps"
    imbalance_min = 10         # judged only while the testbed holds at least this many flows (or pps)
    [hysteresis]
    samples = 3                # a condition holds this many samples in a row before it is raised (or cleared)
    clear = 0.05               # and clears only this far (same unit as its threshold) on the other side
    [monitor]
    interval_ms = 100
    history = 600              # samples kept per instance
    [planner]
    strategy = "heaviest"      # heaviest | least-state | least-bytes: which flows a move takes;
                               # cluster-first: a destination in the source's sharing cluster first
                               # (its move carries the last batch only), the flows as heaviest
    target = 0.6               # the load (fraction of capacity) a plan aims each instance at
    min_instances = 1
    max_instances = 4
    block_bits = 0             # flows move by source address, in aligned blocks of 2^block_bits addresses
    mechanisms = "dist"        # comma-separated; each move takes the one past moves say is fastest
    guarantee = "op"           # ng | lf | op
    opts = ""                  # the move's optimisations (nfx move --opt)
    interval_ms = 500          # how often the loop plans
    cooldown_ms = 1000         # an instance an action touched waits this long before the next
    retry_ms = 2000            # a failed action is planned again after this long
"""
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput, NotFound

BASES = ("flows", "pps")
STRATEGIES = ("heaviest", "least-state", "least-bytes", "cluster-first")
MECHANISMS = ("dist", "opennf", "slim", "dup")       # the moves that carry part of an instance
GUARANTEES = ("ng", "lf", "op")


@dataclass(frozen=True)
class Instance:
    capacity_pps: float = 150_000.0


@dataclass(frozen=True)
class Thresholds:
    overload: float = 0.9
    underload: float = 0.3
    imbalance: float = 0.8
    imbalance_basis: str = "flows"
    imbalance_min: float = 10.0


@dataclass(frozen=True)
class Hysteresis:
    samples: int = 3
    clear: float = 0.05


@dataclass(frozen=True)
class Monitor:
    interval_ms: int = 100
    history: int = 600


@dataclass(frozen=True)
class Planner:
    strategy: str = "heaviest"
    target: float = 0.6
    min_instances: int = 1
    max_instances: int = 4
    block_bits: int = 0
    mechanisms: str = "dist"
    guarantee: str = "op"
    opts: str = ""
    interval_ms: int = 500
    cooldown_ms: int = 1000
    retry_ms: int = 2000

    @property
    def mechanism_list(self) -> list[str]:
        return [m.strip() for m in self.mechanisms.split(",") if m.strip()]


@dataclass(frozen=True)
class Policy:
    instance: Instance = field(default_factory=Instance)
    thresholds: Thresholds = field(default_factory=Thresholds)
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    monitor: Monitor = field(default_factory=Monitor)
    planner: Planner = field(default_factory=Planner)
    source: str | None = None              # the file it came from

    @property
    def interval_s(self) -> float:
        return self.monitor.interval_ms / 1000

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


SECTIONS = {"instance": Instance, "thresholds": Thresholds, "hysteresis": Hysteresis, "monitor": Monitor,
            "planner": Planner}

# field -> (lowest, highest, whether each end is allowed); numbers only
RANGES = {
    ("instance", "capacity_pps"): (0, 1e12, False, True),
    ("thresholds", "overload"): (0, 1, False, True),
    ("thresholds", "underload"): (0, 1, True, False),
    # above one half: at most one instance can hold the share, so "which one" has one answer
    ("thresholds", "imbalance"): (0.5, 1, False, True),
    ("thresholds", "imbalance_min"): (0, 1e12, True, True),
    ("hysteresis", "samples"): (1, 1000, True, True),
    ("hysteresis", "clear"): (0, 0.5, True, False),
    ("monitor", "interval_ms"): (50, 60_000, True, True),       # the agents' stats stream: 0.05 s at least
    ("monitor", "history"): (1, 1_000_000, True, True),
    ("planner", "target"): (0, 1, False, False),
    ("planner", "min_instances"): (1, 64, True, True),
    ("planner", "max_instances"): (1, 64, True, True),
    ("planner", "block_bits"): (0, 16, True, True),
    ("planner", "interval_ms"): (50, 600_000, True, True),
    ("planner", "cooldown_ms"): (0, 600_000, True, True),
    ("planner", "retry_ms"): (0, 600_000, True, True),
}


def _typed(sec: str, name: str, default, value):
    where = f"[{sec}] {name}"
    if isinstance(default, str):
        if not isinstance(value, str):
            raise BadInput(f"policy {where}: a string, not {value!r}")
        return value
    # TOML booleans are not numbers here, though Python's bool is an int
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"policy {where}: a number, not {value!r}")
    if isinstance(default, int) and not isinstance(value, int):
        raise BadInput(f"policy {where}: a whole number, not {value!r}")
    lo, hi, lo_ok, hi_ok = RANGES[(sec, name)]
    if not ((lo <= value if lo_ok else lo < value) and (value <= hi if hi_ok else value < hi)):
        span = f"{'[' if lo_ok else '('}{lo:g}, {hi:g}{']' if hi_ok else ')'}"
        raise BadInput(f"policy {where} = {value!r} is out of range {span}")
    return type(default)(value)


def from_dict(d: dict, source: str | None = None) -> Policy:
    """A Policy from a parsed TOML document; BadInput names the first field it refuses."""
    if not isinstance(d, dict):
        raise BadInput("policy: a table of sections")
    parts = {}
    for sec, value in d.items():
        cls = SECTIONS.get(sec)
        if cls is None and not isinstance(value, dict):
            raise BadInput(f"policy: unknown field {sec!r} outside any section",
                           hint=f"fields go in a section: {', '.join(f'[{s}]' for s in SECTIONS)}")
        if cls is None:
            raise BadInput(f"policy: unknown section [{sec}]", hint=f"sections: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise BadInput(f"policy: [{sec}] must be a table, not {value!r}")
        defaults = cls()
        names = [f.name for f in dataclasses.fields(cls)]
        kw = {}
        for name, v in value.items():
            if name not in names:
                raise BadInput(f"policy: unknown field {name!r} in [{sec}]", hint=f"[{sec}] fields: {', '.join(names)}")
            kw[name] = _typed(sec, name, getattr(defaults, name), v)
        parts[sec] = cls(**kw)
    p = Policy(**parts, source=source)
    check(p)
    return p


def check(p: Policy) -> None:
    """What no single field shows: the combinations that cannot work."""
    t, h = p.thresholds, p.hysteresis
    if t.imbalance_basis not in BASES:
        raise BadInput(f"policy [thresholds] imbalance_basis = {t.imbalance_basis!r}: one of {', '.join(BASES)}")
    if t.underload >= t.overload:
        raise BadInput(f"policy [thresholds] underload ({t.underload:g}) must be below overload ({t.overload:g})")
    # the clear points must not cross: clearing overload must not need underload, nor the reverse
    if t.overload - h.clear <= t.underload + h.clear:
        raise BadInput(f"policy [hysteresis] clear ({h.clear:g}) is too wide for underload {t.underload:g} and "
                       f"overload {t.overload:g}: their clear points cross",
                       hint="clear must be below (overload - underload) / 2")
    pl = p.planner
    if pl.strategy not in STRATEGIES:
        raise BadInput(f"policy [planner] strategy = {pl.strategy!r}: one of {', '.join(STRATEGIES)}")
    bad = [m for m in pl.mechanism_list if m not in MECHANISMS]
    if bad or not pl.mechanism_list:
        raise BadInput(f"policy [planner] mechanisms = {pl.mechanisms!r}: a comma-separated list of "
                       f"{', '.join(MECHANISMS)}")
    if pl.guarantee not in GUARANTEES:
        raise BadInput(f"policy [planner] guarantee = {pl.guarantee!r}: one of {', '.join(GUARANTEES)}")
    if pl.min_instances > pl.max_instances:
        raise BadInput(f"policy [planner] min_instances ({pl.min_instances}) is above max_instances "
                       f"({pl.max_instances})")
    # a plan that aims at a load the analyser calls overload (or underload) would never settle
    if not t.underload + h.clear < pl.target < t.overload - h.clear:
        raise BadInput(f"policy [planner] target ({pl.target:g}) must lie between underload and overload "
                       f"and clear of their margins: ({t.underload + h.clear:g}, {t.overload - h.clear:g})")
    if t.imbalance - h.clear <= 0.5:
        raise BadInput(f"policy [hysteresis] clear ({h.clear:g}) takes imbalance ({t.imbalance:g}) down to one half "
                       f"or below: an even split would not clear it",
                       hint="clear must be below imbalance - 0.5")


def parse(text: str, source: str | None = None) -> Policy:
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"policy {source or ''}: not TOML: {e}".replace("policy : ", "policy: ")) from None
    return from_dict(d, source)


def load(path: str | Path) -> Policy:
    """The policy in a TOML file (NotFound if there is none)."""
    p = Path(path)
    try:
        text = p.read_bytes().decode()
    except FileNotFoundError:
        raise NotFound(f"no policy file {str(p)!r}") from None
    except IsADirectoryError:
        raise BadInput(f"policy {str(p)!r} is a directory, not a TOML file") from None
    except UnicodeDecodeError:
        raise BadInput(f"policy {str(p)!r}: not TOML (not UTF-8 text)") from None
    return parse(text, str(p))
