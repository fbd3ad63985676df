"""What the host took from a bench run: the CPU time a hypervisor gave to others while this
machine's vCPUs wanted it (steal, /proc/stat), so that a slow run can be told from a slow host.
Measured on this VM: 0% in calm runs, 32% over one 20-run move bench (round 2, stop 16)."""

STAT = "/proc/stat"


def cpu_times() -> list[int] | None:
    """The whole machine's CPU time so far, in ticks by kind (user, nice, system, idle, iowait,
    irq, softirq, steal, ...), or None where /proc/stat cannot be read."""
    try:
        with open(STAT) as f:
            first = f.readline().split()
    except OSError:
        return None
    return [int(x) for x in first[1:]] if first and first[0] == "cpu" else None


def steal_pct(before: list[int] | None, after: list[int] | None) -> float | None:
    """Steal's share of all CPU time between two cpu_times() readings, in percent."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    d = [b - a for a, b in zip(before, after)]
    total = sum(d[:8])                   # guest time is counted inside user time already
    return round(100.0 * d[7] / total, 1) if total > 0 else None
