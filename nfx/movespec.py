"""What a move is, for both sides of the wire and for whoever prints one: its guarantees,
mechanisms and optimisations, a request validated once (MoveRequest), the keys of its in-band
cut (ibc_keys), and the figures it reports (MoveMetrics: the controller's reply, the move log,
the CLI's table). The mechanisms themselves are in nfx/migrate (controller side) and nfx/agent
(agent side); each registers its name here (nfx.migrate.mechanism.register).

Options, after OpenNF and DiST (nfx/migrate/mechanism.py says what each does): pz pipelined
import, ll late locking, er early release (the papers'); ov overlap steering with the state push,
dt data-plane trigger (nfx's, dist only); rt: SLiM's cut at real-time priority (nfx's, slim only)."""
import ipaddress
import secrets
import socket
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from . import layout as L
from .errors import BadInput
from .flows import reverse

if TYPE_CHECKING:
    from .filter import Filter

GUARANTEES = ("ng", "lf", "op")
MECHANISMS: list[str] = []       # the registered ones, in order (nfx.migrate registers opennf, dist, dup, slim)
OPTIMISATIONS = ("pz", "ll", "er", "pc", "ov", "dt", "rt")
QUIET_S = 0.05           # src counts as drained when it passed nothing on for this long
FIRE_WAIT_S = 1.0        # dt: the trigger left before "done"; past this the controller steers itself

_last_epoch = 0


def new_epoch() -> int:
    """A move's epoch: random (never 0, never the previous one), so a host that sees one move's
    packets cannot predict the epoch the next move's in-band packets must carry."""
    global _last_epoch
    while (e := secrets.randbelow(0x7FFFFFFF) + 1) == _last_epoch:
        pass
    _last_epoch = e
    return e


def parse_opts(text: str | None) -> set[str]:
    opts = {o.strip().lower() for o in (text or "").replace("|", ",").split(",") if o.strip()}
    bad = opts - set(OPTIMISATIONS)
    if bad:
        raise BadInput(f"unknown optimisation {sorted(bad)}: use pz, ll, er, pc, ov, dt, rt (comma-separated)")
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


@dataclass(frozen=True)
class MoveRequest:
    """One move as asked, checked against the rules of guarantees and options on construction.
    The filter is parsed by whoever took the request (a Filter, never text, within a process);
    the rule on its ports is the gate's, checked where the move starts (nfx.migrate.mechanism)."""
    src: str
    dst: str
    filter: "Filter"
    scopes: tuple[str, ...]
    guarantee: str = "lf"
    mechanism: str = "dist"
    opts: frozenset[str] = frozenset()
    timeout: float = 30.0
    data_link: tuple[float, float] = (0.0, 0.0)    # (one-way delay ms, rate Mbit/s) between the instances
    state_delay_s: float = 0.0      # opennf: emulated, the controller waits this long before taking the state
    stall_reader_s: float = 0.0     # slim: emulated, the source reads nothing from its statelet ring this long

    def __post_init__(self):
        object.__setattr__(self, "opts", frozenset(self.opts))
        if self.guarantee not in GUARANTEES:
            raise BadInput(f"guarantee must be one of {', '.join(GUARANTEES)}")
        if self.mechanism not in MECHANISMS:
            raise BadInput(f"mechanism must be one of {', '.join(MECHANISMS)}")
        if self.src == self.dst:
            raise BadInput("source and destination are the same instance")
        if "dt" in self.opts and (self.mechanism != "dist" or self.op or not self.filter.everything):
            raise BadInput("dt (data-plane trigger) is for dist moves of the whole table (filter all) "
                           "with guarantee ng or lf: op cuts the streams with the two-phase update, and a "
                           "partial filter needs the flows' outside keys, which only the source knows")
        if self.state_delay_s and (self.mechanism != "opennf" or not 0 < self.state_delay_s <= 60):
            raise BadInput("state_delay_ms (an emulated slower state transfer, 0-60000) is for opennf moves; "
                           "SHarP's handovers take it too")
        if self.mechanism == "dup" and self.opts - {"pz"}:
            raise BadInput(f"dup takes no optimisation but pz (pipelined import), not {sorted(self.opts - {'pz'})}")
        elif self.mechanism == "slim":
            # what statelets mirror; all-flows state (an allocator's position, global counters) stays
            mirrored = tuple(s for s in self.scopes if s in ("per-flow", "multi-flow"))
            if not mirrored:
                raise BadInput("a SLiM move carries per-flow and multi-flow state (what statelets mirror)")
            object.__setattr__(self, "scopes", mirrored)
            if not 0 <= self.stall_reader_s <= 60:
                raise BadInput("stall_reader_ms (an emulated slow statelet reader) is 0-60000")
            if self.opts - {"rt"}:
                raise BadInput(f"SLiM takes only rt ({', '.join(sorted(self.opts - {'rt'}))} are OpenNF's and DiST's)")
        elif self.stall_reader_s or "rt" in self.opts:
            raise BadInput("rt and stall_reader_ms (an emulated slow statelet reader) are for slim moves")
        if "pc" in self.opts and (self.mechanism != "dist" or not self.lf or not {"pz", "ll", "er"} <= self.opts):
            raise BadInput("pc (late locking paced by the destination's releases, nfx's own) is for dist moves with "
                           "guarantee lf or op and pz,ll,er: it marks each group once the one before is released")
        if "ov" in self.opts and (self.mechanism != "dist" or not self.lf):
            raise BadInput("ov (overlap steering with the state push) is for dist moves with guarantee lf "
                           "or op: only a destination that holds the flows back may get them before their state")

    @property
    def lf(self) -> bool:
        """Loss-free (lf and op)."""
        return self.guarantee in ("lf", "op")

    @property
    def op(self) -> bool:
        """Order-preserving too."""
        return self.guarantee == "op"


def ibc_keys(flows: list, outside: list, flt: "Filter") -> list:
    """One IBC per side, [(side, key)], carrying a moved flow's tuple so the move's rules and
    marks apply; with no flow to take it from, a tuple made from the filter (ibc_synthetic)."""
    out = {bytes(o) for o in outside}
    inside = next((k for k in flows if bytes(k) not in out), None)
    if inside is None:
        return list(ibc_synthetic(flt))
    return [(L.SIDE_IN, inside), (L.SIDE_OUT, outside[0] if outside else reverse(inside))]


def spread_keys(flows: list, outside: list) -> list:
    """The keys a move on a spread testbed holds, cuts, steers and deletes its flows by (the
    filter there also matches other instances' flows). A NAT's return traffic carries its public
    tuples (`outside`). An NF that rewrites no address (the IDS: no outside keys) sees a
    connection's return traffic under the reverse of its flow's tuple, and the spread sends both
    directions to the same instance (its hash is symmetric): so each flow's reverse goes too,
    whether or not a packet of it has come yet. The outside IBC carries that reverse
    (ibc_keys), and the source must pass it on like a moved flow's packet, or the controller
    never sees the source's cut on that side."""
    keys = list(flows) + list(outside)
    if outside:
        return keys
    have = {bytes(k) for k in keys}
    for k in flows:
        r = reverse(k)
        if bytes(r) not in have:
            have.add(bytes(r))
            keys.append(r)
    return keys


def ibc_synthetic(flt: "Filter") -> tuple:
    """The IBCs of a move with no flow of its own to cut (none matches the filter when the
    source holds them): a tuple that matches the filter, wildcards filled, and its reverse.

    Why that is enough, and flows born during the move keep their order: the cut is per side,
    not per flow. Each side's IBC enters the switch on the port the filter's packets enter by,
    behind them in the same FIFO, and the filter's rule (the same rule for every flow it
    matches) sends it where those packets go: in phase 1 to both instances. At the source it
    meets the move's filter (or its mark) like any packet of the filter and is passed on behind
    them. So it marks the same point in both streams for every flow of the filter, including
    one born a moment before or after it: at dst, that flow's switch-path packets before the
    cut are dropped (the source passed them on), those after it wait until everything the
    source passed on before its cut has gone. Skipping the cut instead would be safe only if
    no flow could be born during the move, which live traffic never proves.

    On the outside of a partial filter a NAT's return traffic is steered by exact rules on the
    public tuples, of which there are none yet: the reverse tuple then gets an exact rule and a
    mark at both instances like a moved flow's public tuple (the caller adds it to the outside
    keys and the explicit marks), so it too follows a rule of the move."""
    def host(net_mask, fill):
        net, mask = net_mask
        return net if mask else int.from_bytes(ipaddress.IPv4Address(fill).packed, "little")

    def port(r, fill):
        return socket.htons(r[0] if r[0] == r[1] else fill)
    k = L.FlowKey(saddr=host(flt.src, "192.0.2.1"), daddr=host(flt.dst, "198.51.100.1"),
                  sport=port(flt.sport, 65534), dport=port(flt.dport, 9), proto=flt.proto or 17)
    return (L.SIDE_IN, k), (L.SIDE_OUT, reverse(k))


# the CLI's table of a move: (field, label)
ROWS = [("move_time_s", "move time (s)"), ("redirect_time_s", "redirect time (s)"), ("total_s", "total (s)"),
        ("flows", "flows"), ("state_chunks", "state chunks"), ("state_bytes", "state bytes"),
        ("packets_redirected", "packets redirected"), ("controller_buffer_peak", "controller buffer peak"),
        ("instance_buffer_peak", "instance buffer peak"), ("max_added_delay_us", "max added delay (µs)"),
        ("serialization_share", "(de)serialization share")]


@dataclass
class MoveMetrics:
    """What one move reports (nfx/control/API.md says what each figure means). to_dict() is the
    controller's reply and the move log's line: its keys in this order, `extra` (a mechanism's
    own figures: dist's go_ms, dt's trigger) after transfer_s, and an optional one left out while
    None. from_dict() reads one back (the CLI, a log line)."""
    mechanism: str
    guarantee: str
    opts: list
    src: str
    dst: str
    filter: str
    scopes: list
    epoch: int = 0
    data_delay_ms: float = 0.0
    data_rate_mbit: float = 0.0
    phases_ms: dict = field(default_factory=dict)
    state_chunks: int | None = None
    state_bytes: int | None = None
    transfer_s: float | None = None
    extra: dict = field(default_factory=dict)
    flows: int | None = None
    move_time_s: float | None = None
    redirect_time_s: float | None = None
    packets_redirected: int | None = None
    total_s: float | None = None
    controller_buffer_peak: int | None = None
    controller_packets: int | None = None
    controller: dict | None = field(default=None, metadata={"optional": True})   # OpenNF's buffer (lf/op)
    instance_buffer_peak: int | None = None
    instance_buffered: int | None = None
    max_added_delay_us: float | None = None
    # dst's releases that waited for the next hop's veth ring to drain, and for how long (ms)
    release_ring_waits: dict | None = field(default=None, metadata={"optional": True})
    serialization_share: float | None = None
    src_stats: dict | None = None
    stale_records: int | None = None
    # set by the controller
    testbed: str | None = field(default=None, metadata={"optional": True})
    ctrl_delay_ms: float | None = field(default=None, metadata={"optional": True})
    ctrl_rate_mbit: float | None = field(default=None, metadata={"optional": True})
    at: float | None = field(default=None, metadata={"optional": True})

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "extra":
                out.update(v)
            elif v is not None or not f.metadata.get("optional"):
                out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "MoveMetrics":
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names},
                   extra={k: v for k, v in d.items() if k not in names})

    def title(self) -> str:
        return f"{self.mechanism} {self.guarantee.upper()} {'+'.join(self.opts) or ''} {self.src} → {self.dst} ({self.filter})"

    def rows(self) -> list[tuple[str, str]]:
        """The CLI's table: (label, value as printed)."""
        def text(v):
            return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else f"{v:,}")
        return [(label, text(getattr(self, k))) for k, label in ROWS]
