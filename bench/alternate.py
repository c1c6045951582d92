"""Source tree against source tree: the rounds of a CPU probe, alternated, and their summary.

``bench.relay_cpu`` and ``bench.intake_cpu`` measure one tree per run, in a fresh process.
:func:`cpu_rounds` runs every tree once per round, in reverse order every other round, so a
machine that slows down or speeds up during the rounds touches every tree alike, then prints
each tree's median CPU time per item with its range.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path


def cpu_rounds(
    trees: Sequence[str], rounds: int, run: Callable[[Path], float], unit: str
) -> dict[str, list[float]]:
    """Call ``run(tree)`` (CPU seconds per ``unit``) for each tree, ``rounds`` times."""
    figures: dict[str, list[float]] = {tree: [] for tree in trees}
    for number in range(rounds):
        for tree in trees if number % 2 == 0 else list(reversed(trees)):
            cpu = run(Path(tree))
            figures[tree].append(cpu)
            print(f"round {number + 1} {tree}: {cpu * 1e6:.0f} µs/{unit}", flush=True)
    for tree, values in figures.items():
        print(
            f"{tree}: median {statistics.median(values) * 1e6:.0f} µs CPU per {unit} "
            f"({min(values) * 1e6:.0f}-{max(values) * 1e6:.0f}, N={len(values)})"
        )
    return figures
