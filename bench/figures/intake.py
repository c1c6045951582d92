"""Figure: durable intake, messages/s with 20 concurrent senders and 5 KiB messages.

smtp-source sends a fixed number of messages to each server in turn (rounds interleaved,
who goes first rotating), once with a new connection per message (smtp-source's default:
connection setup is part of the cost) and once with connections reused (``-d``). Onward
delivery is held on every server, so only intake is measured. Afterwards one more
Dispatch run, not counted, is profiled.
"""

from __future__ import annotations

import os

from bench.figures.common import (
    Context,
    cpu_window,
    flame_graph,
    profile_during,
    rotated,
    settle,
)
from bench.limits import cpu_line, peer_cpu_lines, profile_lines
from bench.load import MESSAGE_BYTES, SESSIONS, run_source
from bench.peers.base import Server
from bench.peers.dispatch_daemon import DispatchServer
from bench.results import DISPATCH, PYTHON_SERVERS, Comparison, Figure, NotMeasured

MODES = ((False, "new connection per message"), (True, "connections reused (-d)"))

METHOD = (
    f"`smtp-source -C 20 -s {SESSIONS} -m M -l {MESSAGE_BYTES} -f a@example.test "
    "-t b@example.test 127.0.0.1:PORT` against each server, timed from outside (M messages, "
    "or what was done when the time limit hit). The main figure opens a new connection per "
    "message (smtp-source's default), so connection setup is part of it; the second row "
    "reuses connections (`-d`). Every server makes each message durable before its 250 "
    "(fsync) and holds onward delivery. Rounds are interleaved: each round runs every "
    "server once, who goes first rotating. CPU is the servers' own (all their processes)."
)


def measure(ctx: Context, servers: list[Server], missing: list[NotMeasured]) -> Figure:
    plan = ctx.plan
    figure = Figure("intake", "Durable intake throughput", METHOD)
    figure.not_measured += missing
    figure.notes.append(
        f"M = {plan.intake_messages} messages per run, time limit {plan.intake_timeout:.0f} s, "
        f"N = {plan.rounds} rounds per mode."
    )
    for reuse, label in MODES:
        for number in range(plan.rounds):
            for server in rotated(servers, number):
                ctx.say(f"  intake ({label}) round {number + 1}: {server.name}")
                _one_run(ctx, figure, server, reuse, label, number)
                settle()
    _compare(figure, servers)
    for server in servers:
        if server.backlog is not None and server.backlog < SESSIONS:
            caveat = (
                f"{server.name} listens with a backlog of {server.backlog} (ss): when "
                f"{SESSIONS} clients connect at once the connections beyond it wait for "
                "TCP's SYN retransmission (1 s, then 3 s, …); that, not its disk or CPU, "
                "sets its new-connection figure. With connections reused it does not matter."
            )
            figure.limits.append(caveat)
            for comparison in figure.comparisons:
                if comparison.peer == server.name and MODES[0][1] in comparison.metric:
                    comparison.caveat = caveat
    figure.limits += peer_cpu_lines(
        figure, f"cores busy, {MODES[0][1]}", os.cpu_count() or 1, PYTHON_SERVERS
    )
    dispatch = next((s for s in servers if isinstance(s, DispatchServer)), None)
    if dispatch is not None:
        _profile(ctx, figure, dispatch)
    return figure


def _one_run(
    ctx: Context, figure: Figure, server: Server, reuse: bool, label: str, number: int
) -> None:
    plan = ctx.plan
    window = cpu_window(server)
    window.start()
    run = run_source(
        server.port,
        plan.intake_messages,
        reuse=reuse,
        timeout=plan.intake_timeout,
        log_path=ctx.work / "smtp-source.out",
    )
    window.stop()
    figure.series(server.name, f"msgs/s, {label}", "msgs/s").values.append(run.rate)
    if run.messages:
        cpu_ms = window.cpu * 1000 / run.messages
        figure.series(server.name, f"CPU ms/message, {label}", "ms").values.append(cpu_ms)
    figure.series(server.name, f"cores busy, {label}", "cores").values.append(window.cores)
    figure.series("smtp-source", f"CPU ms/message, {label}", "ms").values.append(
        run.cpu_seconds * 1000 / max(1, run.messages)
    )
    if run.error:
        figure.notes.append(
            f"{server.name}, {label}, round {number + 1}: {run.messages} of "
            f"{plan.intake_messages} messages in {run.seconds:.1f} s ({run.error})."
        )


def _compare(figure: Figure, servers: list[Server]) -> None:
    ours = figure.peer_series.get(DISPATCH, {})
    for _, label in MODES:
        metric = f"msgs/s, {label}"
        if metric not in ours:
            continue
        for server in servers:
            if server.name != DISPATCH and metric in figure.peer_series.get(server.name, {}):
                figure.comparisons.append(
                    Comparison(
                        metric, server.name, ours[metric], figure.peer_series[server.name][metric]
                    )
                )


def _profile(ctx: Context, figure: Figure, dispatch: DispatchServer) -> None:
    """Profile Dispatch's Trio thread during one more (uncounted) intake run."""
    plan = ctx.plan
    measured = figure.peer_series[DISPATCH][f"msgs/s, {MODES[0][1]}"].median
    messages = int((measured if measured == measured else 100.0) * (plan.profile_seconds + 3))

    def load() -> None:
        run_source(
            dispatch.port,
            messages,
            reuse=False,
            timeout=plan.profile_seconds + 30,
            log_path=ctx.work / "smtp-source-profile.out",
        )

    ctx.say(f"  profiling Dispatch for {plan.profile_seconds:.0f} s during intake")
    summary, window = profile_during(dispatch, plan.profile_seconds, load)
    figure.profile = summary
    figure.profile_label = "Dispatch during intake (new connection per message)"
    figure.limits.append(cpu_line(DISPATCH, window, os.cpu_count() or 1))
    figure.limits += profile_lines(summary)
    flame_graph(ctx, figure, dispatch, load)
