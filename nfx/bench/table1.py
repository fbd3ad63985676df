"""nfx bench move --table1: the DiST paper's Table 1 setting (seeds/dist-distributed-state-transfer.txt,
Sec. 4.2) measured next to the paper's figures: OpenNF, DiST in the paper's order of steps, and
DiST with nfx's optimisations (ov, dt, both), each cell judged by the sink (nfx.bench.move)."""
from pathlib import Path

from ..errors import BadInput
from .move import aggregate, default_csv, host_info, run_cells
from .move_cells import CELL_KEYS

# ---- the DiST paper's Table 1 (Sec. 4.2): 1000 pps, ~2200 states, 95% confidence intervals.
# Reference data, copied from the paper; NOT measured here. OpenNF* = equal control- and
# data-plane latency (the paper's other rows: control plane 10x the data plane's latency).
PAPER_TABLE1 = [
    {"config": "OpenNF LF PZ", "mechanism": "opennf", "opts": "pz", "ctrl": "10x data",
     "states": (2186, 1), "redirected": (6678, 179), "move_time_s": (7.44, 0.21), "redir_time_s": (8.11, 0.17),
     "ser_pct": 2.63, "deser_pct": 1.95},
    {"config": "DiST LF PZ", "mechanism": "dist", "opts": "pz", "ctrl": "10x data",
     "states": (2184, 2), "redirected": (489, 39), "move_time_s": (0.51, 0.06), "redir_time_s": (0.82, 0.04),
     "ser_pct": 40.22, "deser_pct": 33.01},
    {"config": "OpenNF LF PZ|LL|ER", "mechanism": "opennf", "opts": "pz,ll,er", "ctrl": "10x data",
     "states": (2186, 1), "redirected": (17, 5), "move_time_s": (2.25, 0.04), "redir_time_s": (1.51, 0.05),
     "ser_pct": 7.99, "deser_pct": 6.67},
    {"config": "DiST LF PZ|LL|ER", "mechanism": "dist", "opts": "pz,ll,er", "ctrl": "10x data",
     "states": (2204, 2), "redirected": (6, 1), "move_time_s": (0.41, 0.04), "redir_time_s": (0.41, 0.21),
     "ser_pct": 48.63, "deser_pct": 40.81},
    {"config": "OpenNF* LF PZ|LL|ER", "mechanism": "opennf", "opts": "pz,ll,er", "ctrl": "equal",
     "states": (2187, 1), "redirected": (6, 2), "move_time_s": (0.78, 0.02), "redir_time_s": (0.96, 0.17),
     "ser_pct": 26.83, "deser_pct": 22.07},
]
# the paper's four (DiST in the paper's order of steps), and DiST with nfx's optimisations, not
# in the paper: ov (overlap steering with the state push), dt (data-plane trigger), both
NFX_OPTS = ("ov", "dt", "ov,dt")
TABLE1_CONFIGS = [(m, o) for base in ("pz", "pz,ll,er")
                  for m, o in [("opennf", base), ("dist", base)] + [("dist", f"{base},{x}") for x in NFX_OPTS]]
TABLE1_RATE = 1000
TABLE1_CONNECTIONS = 1100    # x2 per-flow entries (fwd + rev) = 2200 states
# control link (one-way delay ms, rate Mbit/s; 0 = unlimited): the paper's, 10 ms and 10 Mbit/s
TABLE1_LINKS = ((10.0, 10.0),)
# the data link between instances (what the agents send each other): the paper's 1 ms, 100 Mbit/s
TABLE1_DATA = (1.0, 100.0)


def table1(repeat: int = 5, links=TABLE1_LINKS, connections: int = TABLE1_CONNECTIONS, rate: int = TABLE1_RATE,
           duration: float = 3.0, at: float = 1.0, csv_path: Path | None = None, timeout: float = 30.0,
           progress=lambda m: None, data=TABLE1_DATA, configs=TABLE1_CONFIGS) -> dict:
    """The paper's Table 1 setting on each control link (delay ms, rate Mbit/s) and the data link
    `data`, `repeat` runs per config."""
    if repeat < 1:
        raise BadInput("--repeat must be at least 1")
    todo = [{"mechanism": m, "guarantee": "lf", "opts": o, "rate_pps": rate, "flows": connections,
             "ctrl_delay_ms": d, "ctrl_rate_mbit": b, "data_delay_ms": data[0], "data_rate_mbit": data[1]}
            for d, b in links for m, o in configs]
    csv_path = Path(csv_path) if csv_path else default_csv(True)
    runs, names, aborted = run_cells(todo, repeat, duration, at, csv_path, "table1", timeout, True, progress)
    summary = aggregate(runs, CELL_KEYS)
    for a in summary:
        a["config"] = config_name(a["mechanism"], a["opts"])
    ratios = []
    for d, b in links:
        def pick(mech, o):
            return next((a for a in summary if (a["ctrl_delay_ms"], a["ctrl_rate_mbit"]) == (d, b)
                         and a["opts"] == o and a["mechanism"] == mech), None)
        for o in ("pz", "pz,ll,er"):
            on = pick("opennf", o)
            for dist_opts in [o] + [f"{o},{x}" for x in NFX_OPTS]:
                di = pick("dist", dist_opts)
                if on and di and on["move_time_s"] and di["move_time_s"]:
                    ratios.append({"ctrl_delay_ms": d, "ctrl_rate_mbit": b, "opts": o, "dist_opts": dist_opts,
                                   "opennf_move_time_s": on["move_time_s"], "dist_move_time_s": di["move_time_s"],
                                   "opennf_over_dist": on["move_time_s"] / di["move_time_s"]})
    paper_ratio = {"pz": 7.44 / 0.51, "pz,ll,er": 2.25 / 0.41, "pz,ll,er equal latency (OpenNF*)": 0.78 / 0.41}
    return {"mode": "table1", "testbeds": names, "aborted": aborted, "rate_pps": rate, "connections": connections,
            "repeat": repeat, "links": [list(x) for x in links], "data_link": list(data),
            "duration_s": duration, "move_at_s": at, "csv": str(csv_path), "runs": runs, "summary": summary,
            "ratios": ratios, "paper": PAPER_TABLE1, "paper_ratios": paper_ratio,
            "violations": [r for r in runs if not r["ok"]], "host": host_info(),
            "notes": ["#States = the move's per-flow keys (nat_fwd + nat_rev: 2 per connection)",
                      "Ser%/Deser%: the move reports export+import time as one share of MoveTime; it is split "
                      "by the export:import ratio of a standalone agent push of the same state after each run",
                      "MoveTime: from the controller starting the move until the state is in at dst and the "
                      "switches' last forwarding update has taken effect (stamped where each happens: one clock)",
                      "DiST rows without OV/DT follow the paper's order: enableEvent, its ack, MovePerFlow, the "
                      "push and ReleaseBuffer, the ack, then the switch update",
                      "OV and DT are nfx's, not in the paper: OV points the switches at dst as soon as the flows "
                      "are held (overlapping the push); DT has the source fire rules the controller armed with its "
                      "request (no control trip for the update): once the state is in, or with OV on hold",
                      "links emulated in software (no netem): control messages (controller <-> agents, switches) "
                      "and what the agents send each other (dist's state push, ReleaseBuffer) get the delay and "
                      "rate; packets redirected over the peer link and the DT trigger are XDP frames and get none"]}


def config_name(mechanism: str, opts: str) -> str:
    return f"{'OpenNF' if mechanism == 'opennf' else 'DiST'} LF " + opts.upper().replace(",", "|")
