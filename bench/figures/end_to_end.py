"""Figure: end-to-end messages/s, from intake through the spool to ``smtp-sink``.

Each relaying server gets its own ``smtp-sink``. A run sends M messages with smtp-source
(new connection per message) and is timed until the sink has counted all of them, so the
figure is the sustained rate at which mail goes *through* the server. The intake part of the
run and the lag behind it (delivery still draining after intake finished) are kept apart.
"""

from __future__ import annotations

import os
import time

from bench.figures.common import (
    Context,
    cpu_window,
    flame_graph,
    profile_during,
    rotated,
    settle,
    started,
)
from bench.limits import cpu_line, peer_cpu_lines, profile_lines
from bench.load import run_source
from bench.peers.base import Peer, RelayMode, Server
from bench.peers.dispatch_daemon import DispatchServer
from bench.peers.sink import Sink, start_sink
from bench.results import DISPATCH, PYTHON_SERVERS, Comparison, Figure, NotMeasured

METRIC = "msgs/s end to end"
CPU_METRIC = "CPU ms/message, end to end"


def measure(ctx: Context) -> Figure:
    plan = ctx.plan
    method = (
        f"smtp-source sends M = {plan.e2e_messages} messages (20 sessions, connections reused "
        "with `-d`, 5 KiB) to a server that relays everything to its own `smtp-sink -c`; the "
        "run ends when the sink has counted all M (time limit "
        f"{plan.e2e_timeout:.0f} s). Rate = M / (start → last message at the sink). Every "
        f"server with its default delivery settings. N = {plan.rounds} interleaved rounds. "
        "Connections are reused so that a server's listen queue (OpenSMTPD's is 5) does not "
        "decide a figure about the flow through it."
    )
    figure = Figure("e2e", "End-to-end throughput (intake → spool → smtp-sink)", method)
    relaying = [peer for peer in ctx.peers if peer.relays]
    for peer in ctx.peers:
        if not peer.relays:
            figure.not_measured.append(
                NotMeasured(peer.name, "not applicable: it spools and never relays")
            )
    sinks: dict[str, Sink] = {
        peer.name: start_sink(ctx.launcher, f"smtp-sink-{peer.name.lower()}") for peer in relaying
    }

    def relay_port(peer: Peer) -> int:
        return sinks[peer.name].port

    with started(ctx, relaying, RelayMode.SINK, relay_port, "e2e") as (servers, missing):
        figure.not_measured += missing
        for number in range(plan.rounds):
            for server in rotated(servers, number):
                ctx.say(f"  end-to-end round {number + 1}: {server.name}")
                _one_run(ctx, figure, server, sinks[server.name], number)
                settle()
        _compare(figure, servers)
        for server in servers:
            evidence = server.delivery_evidence() if server.delivery_evidence else ""
            if evidence:
                figure.limits.append(evidence)
                for comparison in figure.comparisons:
                    if comparison.peer == server.name:
                        comparison.caveat = evidence
        figure.limits += peer_cpu_lines(figure, "cores busy", os.cpu_count() or 1, PYTHON_SERVERS)
        dispatch = next((s for s in servers if isinstance(s, DispatchServer)), None)
        if dispatch is not None:
            _profile(ctx, figure, dispatch, sinks[DISPATCH])
    ctx.launcher.stop(*(sink.child for sink in sinks.values()))
    return figure


def _one_run(ctx: Context, figure: Figure, server: Server, sink: Sink, number: int) -> None:
    plan = ctx.plan
    before = sink.delivered()
    window = cpu_window(server)
    window.start()
    began = time.monotonic()
    run = run_source(
        server.port,
        plan.e2e_messages,
        reuse=True,
        timeout=plan.e2e_timeout,
        log_path=ctx.work / "smtp-source.out",
    )
    intake_done = time.monotonic()
    remaining = max(1.0, plan.e2e_timeout - (intake_done - began))
    arrived = sink.wait_for(before + run.messages, remaining)
    window.stop()
    end = arrived if arrived is not None else time.monotonic()
    delivered = sink.delivered() - before
    figure.series(server.name, METRIC, "msgs/s").values.append(delivered / (end - began))
    figure.series(server.name, "intake part", "msgs/s").values.append(run.rate)
    figure.series(server.name, "delivery lag after intake", "s").values.append(end - intake_done)
    figure.series(server.name, "cores busy", "cores").values.append(window.cores)
    if delivered:
        cpu_ms = window.cpu * 1000 / delivered
        figure.series(server.name, CPU_METRIC, "ms").values.append(cpu_ms)
    if run.error or arrived is None:
        figure.notes.append(
            f"{server.name}, round {number + 1}: {run.messages} of {plan.e2e_messages} "
            f"accepted, {delivered} delivered in {end - began:.1f} s"
            + (f" ({run.error})" if run.error else " (sink count not reached in time)")
        )


def _compare(figure: Figure, servers: list[Server]) -> None:
    ours = figure.peer_series.get(DISPATCH, {}).get(METRIC)
    if ours is None:
        return
    for server in servers:
        theirs = figure.peer_series.get(server.name, {}).get(METRIC)
        if server.name != DISPATCH and theirs is not None:
            figure.comparisons.append(Comparison(METRIC, server.name, ours, theirs))


def _profile(ctx: Context, figure: Figure, dispatch: DispatchServer, sink: Sink) -> None:
    plan = ctx.plan
    rate = figure.peer_series[DISPATCH][METRIC].median
    messages = int((rate if rate == rate else 100.0) * (plan.profile_seconds + 3))

    def load() -> None:
        before = sink.delivered()
        run = run_source(
            dispatch.port,
            messages,
            reuse=True,
            timeout=plan.profile_seconds + 30,
            log_path=ctx.work / "smtp-source-profile.out",
        )
        sink.wait_for(before + run.messages, plan.e2e_timeout)

    ctx.say(f"  profiling Dispatch for {plan.profile_seconds:.0f} s end to end")
    summary, window = profile_during(dispatch, plan.profile_seconds, load)
    figure.profile = summary
    figure.profile_label = "Dispatch relaying to smtp-sink while taking in mail"
    figure.limits.append(cpu_line(DISPATCH, window, os.cpu_count() or 1))
    figure.limits += profile_lines(summary)
    flame_graph(ctx, figure, dispatch, load)
