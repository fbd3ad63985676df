"""Mean and 95% confidence interval of repeated bench runs (Student's t)."""
import math
import statistics

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def mean_ci(xs: list) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95% confidence interval (Student's t); None for no data."""
    xs = [float(x) for x in xs if x is not None and x != ""]
    if not xs:
        return None, None
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    t = _T975[len(xs) - 2] if len(xs) - 2 < len(_T975) else 1.96
    return m, t * statistics.stdev(xs) / math.sqrt(len(xs))
