"""Figure: intake latency p50/p99 at a fixed offered rate (our Trio generator).

Each server gets the same schedule — ``rate`` messages/s for ``seconds`` over 20 pooled
connections — and each message's latency runs from when it was due to its final ``250``
(see :mod:`bench.latency`). Runs reuse the held servers of the intake figure.
"""

from __future__ import annotations

import trio

from bench.figures.common import Context, flame_graph, rotated, settle
from bench.latency import POOL_SIZE, fixed_rate
from bench.peers.base import Server
from bench.peers.dispatch_daemon import DispatchServer
from bench.results import DISPATCH, Comparison, Figure, NotMeasured
from bench.stats import TIMES, percentile
from dispatch.spool.durability import file_fsync_covers_rename

METRICS = (("p50", 0.50), ("p99", 0.99))


def measure(ctx: Context, servers: list[Server], missing: list[NotMeasured]) -> Figure:
    plan = ctx.plan
    method = (
        f"Our Trio generator (`bench/latency.py`) offers {plan.latency_rate:.0f} messages/s "
        f"for {plan.latency_seconds:.0f} s over {POOL_SIZE} connections opened beforehand "
        "(plain MAIL, RCPT, DATA, no pipelining, 5 KiB messages). Latency is from the moment "
        "a message was due to its final 250, so waiting for a free connection counts (no "
        "coordinated omission). Onward delivery held; rounds interleaved."
    )
    figure = Figure("latency", "Intake latency at a fixed offered rate", method)
    figure.not_measured += missing
    for number in range(plan.rounds):
        for server in rotated(servers, number):
            ctx.say(f"  latency round {number + 1}: {server.name}")
            try:
                run = trio.run(fixed_rate, server.port, plan.latency_rate, plan.latency_seconds)
            except (OSError, trio.TooSlowError) as exc:
                figure.notes.append(f"{server.name}, round {number + 1}: failed: {exc}")
                continue
            for name, fraction in METRICS:
                value = percentile(run.latencies, fraction) * 1000
                figure.series(server.name, f"{name} latency", "ms").values.append(value)
            figure.series(server.name, "achieved rate", "msgs/s").values.append(run.achieved_rate)
            if run.errors:
                figure.notes.append(
                    f"{server.name}, round {number + 1}: {run.errors} failed transactions "
                    f"(first: {run.first_error})."
                )
            settle()
    ours = figure.peer_series.get(DISPATCH, {})
    _limits(ctx, figure)
    for name, _ in METRICS:
        metric = f"{name} latency"
        for server in servers:
            theirs = figure.peer_series.get(server.name, {})
            if server.name != DISPATCH and metric in theirs and metric in ours:
                figure.comparisons.append(
                    Comparison(
                        metric, server.name, ours[metric], theirs[metric], higher_is_better=False
                    )
                )
    dispatch = next((s for s in servers if isinstance(s, DispatchServer)), None)
    if dispatch is not None:

        def offered() -> None:  # the same schedule, lasting past the graph's seconds
            seconds = max(plan.latency_seconds, plan.profile_seconds + 2)
            trio.run(fixed_rate, dispatch.port, plan.latency_rate, seconds)

        flame_graph(ctx, figure, dispatch, offered)
    return figure


def _limits(ctx: Context, figure: Figure) -> None:
    """Put the medians next to what the disk costs, so the rest is seen to be CPU time."""
    if ctx.fsync_ms:
        if file_fsync_covers_rename(ctx.work):
            fsyncs, which = 1, "one per message (the file after its rename into `incoming/`)"
        else:
            fsyncs, which = 2, "two per message (the file, then `incoming/`)"
        figure.limits.append(
            f"one 5 KiB write + fsync costs {ctx.fsync_ms:.2f} ms here (machine probe); "
            f"Dispatch makes {which}, so disk time is about {fsyncs * ctx.fsync_ms:.2f} ms of "
            "its p50 — the rest is CPU time on a loop it shares with the other sessions (see "
            "the intake profile)"
        )
    for server, per_metric in figure.peer_series.items():
        p50, p99 = per_metric.get("p50 latency"), per_metric.get("p99 latency")
        if p50 is not None and p99 is not None and p50.values and p99.values:
            figure.limits.append(
                f"{server}: p50 {p50.median:.2f} ms, p99 {p99.median:.2f} ms "
                f"(tail {p99.median / p50.median:.1f}{TIMES} the median)"
            )
