"""Source tree against source tree: the rounds of a CPU probe, alternated, and their summary.

``bench.relay_cpu`` and ``bench.intake_cpu`` measure one tree per run, in a fresh process.
:func:`cpu_rounds` runs every tree once per round, in reverse order every other round, so a
machine that slows down or speeds up during the rounds touches every tree alike, then prints
each tree's median CPU time per item with its range: user and system time apart too, since
a change of Python work shows in the first, and the second (file system and sockets) varies
from run to run with what the kernel is doing for the rest of the machine (docs/intake-cpu.md,
round 7).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MEASURE = """
import resource
def cpu_now():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime, usage.ru_stime
def cpu_line(began, items):
    now = cpu_now()
    return f"{(now[0] - began[0]) / items} {(now[1] - began[1]) / items}"
"""
"""Prepended to a probe's child program: ``cpu_now()`` at the start, then print
``cpu_line(began, items)``, which :meth:`CpuTime.parse` reads."""


@dataclass(frozen=True)
class CpuTime:
    """CPU seconds per item of one run, user and system (every thread of the process)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    @classmethod
    def parse(cls, line: str) -> CpuTime:
        user, system = map(float, line.split())
        return cls(user, system)


def _summary(values: Sequence[float]) -> str:
    low, high = min(values) * 1e6, max(values) * 1e6
    return f"{statistics.median(values) * 1e6:.0f} ({low:.0f}-{high:.0f})"


def cpu_rounds(
    trees: Sequence[str], rounds: int, run: Callable[[Path], CpuTime], unit: str
) -> dict[str, list[CpuTime]]:
    """Call ``run(tree)`` (CPU time per ``unit``) for each tree, ``rounds`` times."""
    figures: dict[str, list[CpuTime]] = {tree: [] for tree in trees}
    for number in range(rounds):
        for tree in trees if number % 2 == 0 else list(reversed(trees)):
            cpu = run(Path(tree))
            figures[tree].append(cpu)
            print(
                f"round {number + 1} {tree}: {cpu.total * 1e6:.0f} µs/{unit} "
                f"(user {cpu.user * 1e6:.0f}, system {cpu.system * 1e6:.0f})",
                flush=True,
            )
    for tree, values in figures.items():
        print(
            f"{tree}: median {_summary([v.total for v in values])} µs CPU per {unit}, "
            f"user {_summary([v.user for v in values])}, "
            f"system {_summary([v.system for v in values])}, N={len(values)}"
        )
    return figures
