"""Line charts as server-rendered SVG: the Overview's throughput and queue depth (24 hours).

No script draws them and nothing is fetched: :func:`line_chart` returns the ``<svg>`` markup
for a template to place (a :class:`markupsafe.Markup`, every text in it escaped here). Colours
come from classes (``series-received`` …) styled in ``dashboard.css`` with the page's custom
properties, so the charts follow the light and dark schemes; the Content-Security-Policy
(``style-src 'self'``) allows no ``style`` attribute, and none is used.

Accessibility: the ``<svg>`` is an image (``role="img"``) named by its ``<title>`` and
described by its ``<desc>`` (what it shows and the totals); the page also offers the figures
as a table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import attrs
from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 200
LEFT = 44  # room for the y labels
RIGHT = 20  # room for the last x label, centred on the right edge
TOP = 10
BOTTOM = 24  # room for the x labels
TICK_HOURS = 6
MIN_TOP = 4.0

type Scale = Callable[[float], float]


@attrs.frozen
class Series:
    """One line: its name (legend and description), its CSS class suffix, and its points
    ``(unix time, value)``, oldest first. A gap longer than ``gap`` seconds breaks the line."""

    name: str
    css: str
    points: Sequence[tuple[float, float]]
    gap: float = math.inf


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 4, 5 x 10^n that is at least ``value`` and whose half (the
    middle grid line) is a whole number; at least :data:`MIN_TOP`."""
    magnitude = 10 ** math.floor(math.log10(max(value, MIN_TOP)))
    for scale in (magnitude, magnitude * 10):
        for step in (1, 2, 2.5, 4, 5):
            top = step * scale
            if top >= max(value, MIN_TOP) and (top / 2).is_integer():
                return float(top)
    raise AssertionError("unreachable")


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:g}"


def _runs(series: Series, x: Scale, y: Scale) -> list[list[tuple[float, float]]]:
    """The series' points in chart coordinates, cut into runs at its gaps."""
    runs: list[list[tuple[float, float]]] = []
    previous: float | None = None
    for at, value in series.points:
        if previous is None or at - previous > series.gap:
            runs.append([])
        runs[-1].append((x(at), y(value)))
        previous = at
    return runs


def _draw(series: Series, x: Scale, y: Scale) -> list[str]:
    """A polyline per run of the series; a dot for a run of one point."""
    css = f"series series-{escape(series.css)}"
    name = f"<title>{escape(series.name)}</title>"
    drawn = []
    for run in _runs(series, x, y):
        if len(run) == 1:
            ((cx, cy),) = run
            dot = f'<circle class="{css}" cx="{cx:.1f}" cy="{cy:.1f}" r="2.5">'
            drawn.append(f"{dot}{name}</circle>")
        else:
            points = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
            drawn.append(f'<polyline class="{css}" points="{points}">{name}</polyline>')
    return drawn


def line_chart(
    *,
    chart_id: str,
    title: str,
    description: str,
    series: Sequence[Series],
    start: float,
    end: float,
) -> Markup:
    """An SVG line chart of ``series`` over ``[start, end]`` (Unix times), y from 0.

    ``chart_id`` makes the ids of its title and description unique on the page.
    """
    peak = max((value for s in series for _, value in s.points), default=0.0)
    top = nice_ceiling(peak)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max(end - start, 1.0)

    def x(at: float) -> float:
        return LEFT + (at - start) / span * plot_w

    def y(value: float) -> float:
        return TOP + plot_h - value / top * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" id="{chart_id}">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        level = y(top * fraction)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{level:.1f}" '
            f'y2="{level:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{LEFT - 6}" y="{level + 4:.1f}" text-anchor="end">'
            f"{escape(_label(top * fraction))}</text>"
        )
    tick = math.ceil(start / (TICK_HOURS * 3600)) * TICK_HOURS * 3600
    while tick <= end:
        at_x = x(tick)
        parts.append(
            f'<line class="tick" x1="{at_x:.1f}" x2="{at_x:.1f}" y1="{TOP}" y2="{TOP + plot_h}"/>'
        )
        parts.append(
            f'<text class="axis" x="{at_x:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
            f"{time.strftime('%H:%M', time.gmtime(tick))}</text>"
        )
        tick += TICK_HOURS * 3600
    for one in series:
        parts.extend(_draw(one, x, y))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every text above is escaped)
