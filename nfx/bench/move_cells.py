"""The move bench's cells: the matrix chosen on the command line (mechanism x guarantee x
optimisations x rate x flows x links), and what each guarantee forbids, as the sink counts it."""
from ..errors import BadInput
from ..migrate import GUARANTEES, MECHANISMS
from ..movespec import OPTIMISATIONS, parse_opts

OPTS = ("none", "pz", "pz,ll,er")
# the default matrix: 2 x 3 x 3 x 2 x 2 = 72 cells, a few minutes on the 2-vCPU VM
DEFAULT_RATES = (10_000, 100_000)
DEFAULT_FLOWS = (1000, 10_000)
# the full matrix (README): --rates 1000,10000,100000,200000 --flows 100,1000,10000,100000
FULL_RATES = (1000, 10_000, 100_000, 200_000)
FULL_FLOWS = (100, 1000, 10_000, 100_000)
CELL_KEYS = ("mechanism", "guarantee", "opts", "rate_pps", "flows", "ctrl_delay_ms", "ctrl_rate_mbit", "data_delay_ms",
             "data_rate_mbit")


def split(text, cast=str) -> list:
    """'a,b' (or a list of such) -> [cast(a), cast(b)]."""
    items = []
    for part in (text if isinstance(text, (list, tuple)) else [text]):
        items += [x.strip() for x in str(part).split(",") if x.strip()]
    try:
        return [cast(x) for x in items]
    except ValueError as e:
        raise BadInput(f"bad list {text!r}: {e}") from None


def parse_opts_list(values) -> list[str]:
    """--opts: repeatable, each one set ('none', 'pz', 'pz,ll,er' or 'pz|ll|er'); ';' separates
    several sets in one value."""
    out = []
    for v in (values if isinstance(values, (list, tuple)) else [values]):
        for s in str(v).split(";"):
            s = s.strip().lower()
            if not s:
                continue
            o = set() if s in ("none", "-", "") else parse_opts(s)
            norm = ",".join(x for x in OPTIMISATIONS if x in o) or "none"
            if norm not in out:
                out.append(norm)
    if not out:
        raise BadInput("--opts selects nothing")
    return out


def cells(mechanisms, guarantees, opts, rates, flows, delays, skip_ng_opts: bool = True,
          ctrl_rates=(0.0,), data=(0.0, 0.0)) -> list[dict]:
    for m in mechanisms:
        if m not in MECHANISMS:
            raise BadInput(f"unknown mechanism {m!r}: {', '.join(MECHANISMS)}")
    for g in guarantees:
        if g not in GUARANTEES:
            raise BadInput(f"unknown guarantee {g!r}: {', '.join(GUARANTEES)}")
    for r in rates:
        if not 1 <= r <= 2_000_000:
            raise BadInput("rates must be 1..2000000 pps")
    for f in flows:
        if not 1 <= f <= 200_000:
            raise BadInput("flows must be 1..200000")
    for d in delays:
        if not 0 <= d <= 1000:
            raise BadInput("control delays must be 0..1000 ms")
    for b in ctrl_rates:
        if not 0 <= b <= 100_000:
            raise BadInput("control link rates must be 0..100000 Mbit/s (0: unlimited)")
    out = []
    for f in flows:
        for d, b in ((d, b) for d in delays for b in ctrl_rates):
            for r in rates:
                for m in mechanisms:
                    for g in guarantees:
                        for o in opts:
                            oset = set(o.split(","))
                            # ng holds nothing back: ll and er do nothing there (pz still pipelines)
                            if skip_ng_opts and g == "ng" and oset & {"ll", "er"}:
                                continue
                            if "dt" in oset and (m != "dist" or g == "op"):
                                continue          # the trigger is dist's, for ng and lf
                            if "ov" in oset and (m != "dist" or g == "ng"):
                                continue          # the overlap is dist's, for lf and op
                            if "pc" in oset and (m != "dist" or g == "ng" or not {"pz", "ll", "er"} <= oset):
                                continue          # paced late locking is dist's, with pz,ll,er
                            if m == "dup" and oset - {"none", "pz"}:
                                continue          # the duplication baseline takes pz at most
                            if (m == "slim" and oset - {"none", "rt"}) or (m != "slim" and "rt" in oset):
                                continue          # SLiM takes rt at most, and rt is SLiM's
                            out.append({"mechanism": m, "guarantee": g, "opts": o, "rate_pps": r, "flows": f,
                                        "ctrl_delay_ms": d, "ctrl_rate_mbit": b,
                                        "data_delay_ms": data[0], "data_rate_mbit": data[1]})
    return out


# what each guarantee forbids, as the sink counts it. Every guarantee forbids `unexpected`
# (packets the sink cannot attribute to a generated flow/seq: the measurement itself is off);
# LF and OP also `out_of_window` (packets the sink could not judge dup or new prove nothing).
FORBIDDEN = {"ng": ("unexpected",),
             "lf": ("lost", "duplicated", "unexpected", "out_of_window"),
             "op": ("lost", "duplicated", "reordered", "unexpected", "out_of_window")}


def judge(guarantee: str, r: dict) -> tuple[bool, str]:
    """LF: 0 lost, 0 duplicated; OP: also 0 reordered; NG: nothing promised about the flows.
    All: 0 unexpected; LF, OP: 0 out_of_window (see FORBIDDEN)."""
    bad = [f"{k} {r[k]:,}" for k in FORBIDDEN[guarantee] if r.get(k)]
    if bad:
        return False, "VIOLATION: " + ", ".join(bad)
    return (True, f"ng (lost {r['lost']:,})") if guarantee == "ng" else (True, "ok")


def verdict(rs: list[dict], bad: list[dict]) -> str:
    """One line for a cell's runs: ok / ng, or what went wrong in how many of them."""
    late = sum(1 for r in rs if r.get("move_inside_traffic") is False)
    tail = f" ({late}/{len(rs)} outlasted the traffic)" if late else ""
    if not bad:
        return ("ng" if rs[0]["guarantee"] == "ng" else "ok") + tail
    parts = []
    for k in FORBIDDEN[rs[0]["guarantee"]]:
        vals = [r[k] for r in bad if r.get(k)]
        if vals:
            lo, hi = min(vals), max(vals)
            parts.append(f"{k} {lo:,}" + (f"-{hi:,}" if hi != lo else ""))
    fails = sum(1 for r in bad if r.get("error"))
    if fails:
        parts.append(f"{fails} move(s) failed")
    if any("nf1 holds" in r["verdict"] for r in bad):
        parts.append("state not all at nf1")
    return f"VIOLATION in {len(bad)}/{len(rs)}: " + ", ".join(parts) + tail


def link_text(delay_ms: float, rate_mbit: float) -> str:
    return f"{delay_ms:g} ms" + (f", {rate_mbit:g} Mbit/s" if rate_mbit else "")
