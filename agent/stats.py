"""The one percentile definition of the project, so the app's live figures and the load tester's agree.

Linear interpolation between closest ranks (numpy's default, ``method="linear"``): DESIGN's load-test metrics are
reported with it, and the admin API and Stats tab read their recent-latency percentiles through the same function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of values sorted ascending; raises ValueError when there are none."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0–100")
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def percentiles(values: Iterable[float], qs: tuple[float, ...] = (0.5, 0.95)) -> dict[str, float | None]:
    """``{"p50": …, "p95": …}`` for quantiles ``qs`` (fractions), unsorted input; None when there is no data."""
    ordered = sorted(values)
    return {f"p{round(q * 100)}": percentile(ordered, q * 100) if ordered else None for q in qs}
