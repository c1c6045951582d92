"""Figure: ``/health`` latency while intake runs at full speed, and with the database wedged.

Dispatch alone (no peer has this endpoint). The dashboard port's ``/health`` is probed ten
times a second over new HTTPS connections (:mod:`bench.health_probe`) in three conditions:
idle, while smtp-source pushes intake as fast as it goes, and while a helper process
(:mod:`bench.wedge`) holds ``BEGIN EXCLUSIVE`` on the SQLite file. Every answer must come
before ``health.timeout_seconds``.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import trio

from bench.figures.common import Context, flame_graph, settle, started
from bench.health_probe import PROBE_INTERVAL, HealthRun, probe_for, probe_while
from bench.load import run_source
from bench.peers.base import RelayMode
from bench.peers.dispatch_daemon import HEALTH_TIMEOUT_SECONDS, DispatchServer
from bench.peers.python_peer import REPO
from bench.procs import LOOPBACK, free_port
from bench.results import DISPATCH, Absolute, Figure
from bench.stats import TIMES, fmt, percentile

IDLE_SECONDS = 3.0
CONDITIONS = ("idle", "intake at full speed", "database wedged")


def measure(ctx: Context) -> Figure:
    plan = ctx.plan
    method = (
        f"GET `/health` on the dashboard port every {PROBE_INTERVAL * 1000:.0f} ms, each on a "
        "new HTTPS connection, timed to the last byte: idle; while smtp-source sends "
        f"{plan.health_load_messages} messages (20 sessions, new connection each); and for "
        f"{plan.wedge_seconds:.0f} s while another process holds `BEGIN EXCLUSIVE` on "
        f"the SQLite database. Deadline `health.timeout_seconds` = {HEALTH_TIMEOUT_SECONDS} s. "
        f"N = {plan.rounds} rounds; p99 per round, and over all probes pooled."
    )
    figure = Figure("health", "/health under load and with the database wedged", method)
    dispatch_peer = [peer for peer in ctx.peers if peer.name == DISPATCH]
    with started(ctx, dispatch_peer, RelayMode.HELD, lambda _: free_port(), "health") as (
        servers,
        missing,
    ):
        figure.not_measured += missing
        dispatch = next((s for s in servers if isinstance(s, DispatchServer)), None)
        if dispatch is None:
            return figure
        url = f"https://{LOOPBACK}:{dispatch.webui_port}/health"
        pooled: dict[str, HealthRun] = {name: HealthRun() for name in CONDITIONS}
        for number in range(plan.rounds):
            for condition in CONDITIONS:
                ctx.say(f"  /health round {number + 1}: {condition}")
                run = _probe(ctx, dispatch, url, condition)
                _record(figure, condition, run, pooled[condition], number)
                settle()
        _summarise(figure, pooled)

        def probed_intake() -> None:
            _probe(ctx, dispatch, url, "intake at full speed")

        flame_graph(ctx, figure, dispatch, probed_intake)  # where the event loop's time goes
    return figure


def _probe(ctx: Context, dispatch: DispatchServer, url: str, condition: str) -> HealthRun:
    plan = ctx.plan
    if condition == "idle":
        return trio.run(probe_for, url, IDLE_SECONDS)
    if condition == "intake at full speed":

        def load() -> None:
            run_source(
                dispatch.port,
                plan.health_load_messages,
                reuse=False,
                timeout=plan.intake_timeout * 3,
                log_path=ctx.work / "smtp-source.out",
            )

        run, _ = trio.run(probe_while, url, load)
        return run
    helper = ctx.launcher.start(
        "wedge",
        [sys.executable, "-m", "bench.wedge", str(dispatch.database), str(plan.wedge_seconds + 60)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        helper.wait_for_log("locked", 60)
        return trio.run(probe_for, url, plan.wedge_seconds)
    finally:
        ctx.launcher.stop(helper)


def _record(figure: Figure, condition: str, run: HealthRun, pooled: HealthRun, number: int) -> None:
    pooled.latencies += run.latencies
    pooled.statuses.update(run.statuses)
    pooled.check_status.update(run.check_status)
    pooled.errors += run.errors
    for name, values in run.check_ms.items():
        pooled.check_ms.setdefault(name, []).extend(values)
    figure.series(DISPATCH, f"p50, {condition}", "ms").values.append(run.p(0.50) * 1000)
    figure.series(DISPATCH, f"p99, {condition}", "ms").values.append(run.p(0.99) * 1000)
    if run.errors:
        figure.notes.append(
            f"{condition}, round {number + 1}: {run.errors} probes failed ({run.first_error})."
        )


def _summarise(figure: Figure, pooled: dict[str, HealthRun]) -> None:
    for condition, run in pooled.items():
        if not run.latencies:
            continue
        worst = max(run.latencies)
        headroom = (HEALTH_TIMEOUT_SECONDS - worst) * 1000
        verdict = (
            f"below the {HEALTH_TIMEOUT_SECONDS:.1f} s deadline by {headroom:,.0f} ms"
            if headroom > 0
            else f"NOT below the {HEALTH_TIMEOUT_SECONDS:.1f} s deadline"
        )
        figure.absolutes.append(
            Absolute(
                f"/health p99, {condition}",
                figure.series(DISPATCH, f"p99, {condition}", "ms"),
                note=(
                    f"pooled over {len(run.latencies)} probes: p50 "
                    f"{fmt(run.p(0.5) * 1000)} ms, p99 {fmt(run.p(0.99) * 1000)} ms, max "
                    f"{fmt(worst * 1000)} ms — {verdict}; answers {_counts(run.statuses)}"
                ),
            )
        )
        checks = "; ".join(
            f"{name} p99 {fmt(percentile(values, 0.99))} ms"
            for name, values in sorted(run.check_ms.items())
        )
        slowest = max((percentile(v, 0.5) for v in run.check_ms.values()), default=0.0)
        figure.limits.append(
            f"{condition}: answer p50 {fmt(run.p(0.5) * 1000)} ms, of which the slowest check "
            f"(they run concurrently) took p50 {fmt(slowest)} ms; checks p99 — {checks}; "
            f"results {_counts(run.check_status)}"
        )
    wedged = pooled["database wedged"]
    if wedged.latencies:
        figure.limits.append(
            "database wedged: the database check runs until the probe's deadline "
            "(health.timeout_seconds less a 0.1 s margin for the answer) and reports "
            "`timeout`, so every answer takes about the deadline by design; the margin is "
            "the headroom shown above"
        )
    loaded, idle = pooled["intake at full speed"], pooled["idle"]
    if loaded.latencies and idle.latencies:
        figure.limits.append(
            f"intake at full speed: answers slow from p50 {fmt(idle.p(0.5) * 1000)} ms idle "
            f"to {fmt(loaded.p(0.5) * 1000)} ms while the checks stay fast: with "
            "listener.processes > 1 the main process takes no SMTP session, but its Trio "
            "thread still waits for a core at each step of an answer (accept, TLS handshake, "
            "request, the checks' thread hops) while the intake workers and the load "
            "generator keep the cores busy (docs/intake-cpu.md, round 2)"
        )


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {TIMES}{count}" for key, count in counter.most_common())
