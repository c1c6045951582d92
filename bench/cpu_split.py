"""CPU milliseconds per message, split into intake and delivery, from two figures of a run.

Intake's CPU per message comes from the intake figure (connections reused, delivery held);
end to end's from the end-to-end figure (the same load, relayed to smtp-sink). Both count
every process of Dispatch from ``/proc``. Delivery's share is the difference of the two
medians: what relaying one message adds to taking it in.
"""

from __future__ import annotations

from bench.figures.end_to_end import CPU_METRIC
from bench.figures.intake import MODES
from bench.results import DISPATCH, Absolute, Figure, Series

INTAKE_METRIC = f"CPU ms/message, {MODES[1][1]}"


def add_cpu_split(figures: list[Figure]) -> None:
    """Add intake / end-to-end / delivery CPU per message rows to the end-to-end figure."""
    by_key = {figure.key: figure for figure in figures}
    intake, e2e = by_key.get("intake"), by_key.get("e2e")
    if intake is None or e2e is None:
        return
    taken = intake.peer_series.get(DISPATCH, {}).get(INTAKE_METRIC)
    through = e2e.peer_series.get(DISPATCH, {}).get(CPU_METRIC)
    if taken is None or through is None or not taken.values or not through.values:
        return
    delivery = Series("ms", [through.median - taken.median])
    e2e.absolutes += [
        Absolute("CPU ms per message, intake", taken, "intake figure, connections reused"),
        Absolute("CPU ms per message, end to end", through, "end-to-end figure"),
        Absolute("CPU ms per message, delivery", delivery, "end to end minus intake (medians)"),
    ]
