"""Small statistics: medians, percentiles and the text that shows a series with its spread."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

EN_DASH = "\u2013"  # ranges: "12-15" reads as a subtraction
TIMES = "\u00d7"  # ratios: "1.2x"


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values (a run that measured nothing shows as "n/a")."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) by the nearest-rank method; NaN for no values.

    Nearest rank, not interpolation: a p99 is then a latency some message really had.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, grouped thousands; "n/a" for NaN."""
    if math.isnan(value):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def spread(values: Sequence[float], digits: int = 3) -> str:
    """``median (min-max, N=n)``: how a figure is shown everywhere in the report."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{fmt(values[0], digits)} (N=1)"
    return (
        f"{fmt(median(values), digits)} "
        f"({fmt(min(values), digits)}{EN_DASH}{fmt(max(values), digits)}, N={len(values)})"
    )
