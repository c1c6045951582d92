"""What a figure produces: measured series, Dispatch/peer comparisons, peers not measured.

Figures fill these in; :mod:`bench.report` turns them into Markdown. Plain dataclasses, so a
figure can be built up step by step while its runs come in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.profile import ProfileSummary
from bench.stats import EN_DASH, TIMES, fmt, median, spread

DISPATCH = "Dispatch"
DISPATCH_ONE_PROCESS = "Dispatch, 1 process"
PYTHON_SERVERS = frozenset({DISPATCH_ONE_PROCESS, "aiosmtpd+fsync"})
"""Servers that are one Python process (one interpreter lock). Dispatch itself runs
``listener.processes`` = 2 (its delivery still runs in the main process alone)."""


@dataclass
class Series:
    """N measurements of one quantity by one subject (interleaved runs append to it)."""

    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.values)

    def text(self, digits: int = 3) -> str:
        return f"{spread(self.values, digits)} {self.unit}" if self.values else "n/a"


@dataclass
class Comparison:
    """Dispatch against one peer on one metric, from rounds run back to back.

    The ratio is Dispatch / peer of the medians; ``higher_is_better`` says which way a ratio
    above 1 points (throughput: yes; latency: no). The per-round ratios give its spread.
    """

    metric: str
    peer: str
    dispatch: Series
    other: Series
    higher_is_better: bool = True
    caveat: str = ""  # why the peer's number is not its capacity, when the run shows it

    @property
    def ratio(self) -> float:
        if not self.dispatch.values or not self.other.values or self.other.median == 0:
            return math.nan
        return self.dispatch.median / self.other.median

    @property
    def round_ratios(self) -> list[float]:
        return [d / o for d, o in zip(self.dispatch.values, self.other.values, strict=False) if o]

    def ratio_text(self) -> str:
        if math.isnan(self.ratio):
            return "n/a"
        rounds = self.round_ratios
        span = f" ({fmt(min(rounds), 2)}{EN_DASH}{fmt(max(rounds), 2)})" if len(rounds) > 1 else ""
        return f"**{fmt(self.ratio, 3)}{TIMES}**{span}"

    def verdict(self) -> str:
        """The summary's word for the ratio: ahead, behind, or level (within 5 %)."""
        if math.isnan(self.ratio):
            return "n/a"
        better = self.ratio if self.higher_is_better else 1 / self.ratio
        if better > 1.05:
            return "ahead"
        if better < 0.95:
            return "behind"
        return "level"


@dataclass
class Absolute:
    """A figure measured for Dispatch alone (idle memory, /health under load, …)."""

    metric: str
    series: Series
    note: str = ""


@dataclass
class NotMeasured:
    """A peer (or a figure) that could not be measured, and the concrete reason."""

    subject: str
    reason: str


@dataclass
class Figure:
    """One section of the report: what was done, what came out, and what limits it."""

    key: str
    title: str
    method: str
    comparisons: list[Comparison] = field(default_factory=list)
    absolutes: list[Absolute] = field(default_factory=list)
    peer_series: dict[str, dict[str, Series]] = field(default_factory=dict)
    not_measured: list[NotMeasured] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: ProfileSummary | None = None
    profile_label: str = ""
    seconds: float = 0.0
    flame: str = ""
    """The flame graph's path relative to the report (``flames/<key>.svg``), if one was made."""

    def series(self, subject: str, metric: str, unit: str) -> Series:
        """The series of ``metric`` for ``subject`` (created on first use)."""
        per_subject = self.peer_series.setdefault(subject, {})
        if metric not in per_subject:
            per_subject[metric] = Series(unit)
        return per_subject[metric]
