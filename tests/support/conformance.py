"""The conformance rule, checked from an admission log.

For every interval [t1, t2]: units admitted <= capacity + rate * (t2 - t1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def worst_excess(points: Iterable[tuple[float, float]], *, capacity: float, rate: float) -> float:
    """Largest (admitted - allowed) over all intervals; <= 0 means the log conforms.

    `points` are (time, units). The worst interval starts and ends at admissions,
    so one pass over the sorted log with a running minimum finds it.
    """
    ordered = sorted(points)
    if not ordered:
        return float("-inf")
    # The gate works in whole microseconds; epoch seconds as floats blur them, so
    # recover exact relative microseconds before multiplying by the rate.
    t0 = ordered[0][0]
    ordered = [(round((t - t0) * 1e6) / 1e6, u) for t, u in ordered]
    worst = float("-inf")
    before = 0.0  # units admitted before admission i
    best_start = float("inf")  # min over i <= j of (S_{i-1} - rate * t_i)
    for t, units in ordered:
        best_start = min(best_start, before - rate * t)
        before += units
        worst = max(worst, before - rate * t - best_start - capacity)
    return worst


def admitted_share(points: Iterable[tuple[float, float]], *, capacity: float, rate: float) -> float:
    """Units admitted / units the rule allows over the log's own span."""
    ordered = sorted(points)
    if not ordered:
        return 0.0
    span = ordered[-1][0] - ordered[0][0]
    return sum(u for _, u in ordered) / (capacity + rate * span)


def window_excess(
    points: Iterable[tuple[float, float]], *, window: float, allowance: float
) -> float:
    """Largest (units in one window - allowance) over every window of `window` seconds,
    at any phase; <= 0 means the log conforms to a provider that counts per window.

    A window is half-open, [t, t + window), as a provider's periods are. The fullest
    one starts at an admission, so a sliding sum over the sorted log finds it.
    """
    ordered = sorted(points)
    if not ordered:
        return float("-inf")
    t0 = ordered[0][0]
    # Exact relative microseconds, as in `worst_excess`.
    micros = [(round((t - t0) * 1e6), u) for t, u in ordered]
    span = round(window * 1e6)
    worst = float("-inf")
    inside = 0.0
    end = 0  # first admission at or after the window's end
    for start, (t, _) in enumerate(micros):
        while end < len(micros) and micros[end][0] < t + span:
            inside += micros[end][1]
            end += 1
        worst = max(worst, inside - allowance)
        inside -= micros[start][1]
    return worst


def window_share(
    points: Iterable[tuple[float, float]], *, window: float, allowance: float
) -> float:
    """Units admitted / the most any log over the same span could hold: one allowance
    at the first start and one more every `window` seconds up to the last start."""
    ordered = sorted(points)
    if not ordered:
        return 0.0
    span = ordered[-1][0] - ordered[0][0]
    return sum(u for _, u in ordered) / (allowance * (1 + math.floor(span / window + 1e-9)))
