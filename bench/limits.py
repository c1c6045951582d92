"""Sentences about what limits a figure, generated from the evidence of this run.

The report is rewritten by every run, so nothing in it may be a claim written by hand about
numbers: these functions turn CPU accounting and profiles into the "what limits it" lines.
"""

from __future__ import annotations

from bench.procstat import CpuWindow
from bench.profile import ProfileSummary
from bench.results import Figure

SATURATED = 0.85
"""A thread busy this fraction of the time is the limit (the rest is scheduling noise)."""


def cpu_line(name: str, window: CpuWindow, cores: int) -> str:
    """How busy a server was during a run, split by thread for Dispatch."""
    text = f"{name}: {window.cores:.2f} of {cores} cores busy"
    if window.threads is not None:
        main = window.thread_cores("main")
        other = window.thread_cores("other")
        process = main + other
        others = window.cores - process  # intake worker processes (listener.processes > 1)
        text += f" (main process {process:.2f}: Trio thread {main:.2f}, worker threads {other:.2f}"
        text += f"; intake worker processes {others:.2f})" if others >= 0.05 else ")"
        if main >= SATURATED:
            text += " — the main Trio thread is saturated: CPU-bound on one core"
        elif process >= SATURATED:
            text += (
                " — the main process as a whole is at one core: the Trio thread and the worker "
                "threads share one interpreter lock, so Python CPU time is the limit, split "
                "between the event loop and the work handed to threads"
            )
        elif window.cores < 0.5:
            text += " — mostly waiting (disk or peers), not CPU-bound"
    elif window.cores >= SATURATED * cores:
        text += " — all cores busy"
    return text


def profile_lines(summary: ProfileSummary, count: int = 8) -> list[str]:
    """The profile in a few lines: idle share, the hottest functions, the areas."""
    if summary.error:
        return [f"profile not available: {summary.error}"]
    if summary.seconds <= 0:
        return ["profile empty"]
    idle = summary.idle_seconds / summary.seconds
    lines = [
        f"Trio thread idle (waiting in epoll) {idle:.0%} of the {summary.seconds:.0f} s "
        "profile"
        + (
            " — it hardly ever waits for I/O: it runs Python or waits for the interpreter lock"
            if idle < 1 - SATURATED
            else ""
        )
    ]
    busy = summary.busy_seconds or 1.0
    areas = sorted(summary.areas.items(), key=lambda item: item[1], reverse=True)
    lines.append(
        "busy time by area: "
        + ", ".join(f"{name} {seconds / busy:.0%}" for name, seconds in areas[:6])
    )
    top = summary.top_self(count)
    lines.append(
        "hottest functions (self time, share of busy time): "
        + "; ".join(
            f"`{frame.function}` ({frame.where}) {frame.self_seconds / busy:.0%}" for frame in top
        )
    )
    return lines


def peer_cpu_lines(
    figure: Figure, metric: str, cores: int, single_interpreter: frozenset[str]
) -> list[str]:
    """Per server: median cores busy during its measured runs, and what that suggests.

    ``single_interpreter`` names the servers that are one Python process: at one core they
    are at their limit, whatever the machine has left.
    """
    lines = []
    for name, per_metric in figure.peer_series.items():
        series = per_metric.get(metric)
        if series is None or not series.values:
            continue
        busy = series.median
        line = f"{name}: median {busy:.2f} of {cores} cores busy during its runs"
        if busy >= SATURATED * cores:
            line += " — every core busy: CPU-bound"
        elif name in single_interpreter and busy >= SATURATED:
            line += " — one Python process at one core: CPU-bound (one interpreter lock)"
        elif busy < 0.5:
            line += " — mostly waiting, not CPU-bound"
        lines.append(line)
    return lines
