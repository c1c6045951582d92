"""Figure: message shapes — 1 MiB messages, and 100 recipients per message.

The intake figures send 5 KiB to one recipient. Here smtp-source sends, to every server with
onward delivery held, messages of 1 MiB (the bytes path: DATA parsing, spilling, the write
and fsync of a large file) and 5 KiB messages to 100 recipients each (the RCPT path and an
envelope that outgrows Dispatch's one-file form: it gets its own ``.json``). Connections are
reused (``-d``), so connection setup does not blur the shape. Rounds interleaved as
everywhere; one extra Dispatch run of the 1 MiB shape is drawn as a flame graph.
"""

from __future__ import annotations

from bench.figures.common import Context, cpu_window, flame_graph, rotated, settle, started
from bench.load import MESSAGE_BYTES, SESSIONS, run_source
from bench.peers.base import RelayMode, Server
from bench.peers.dispatch_daemon import DispatchServer
from bench.procs import free_port
from bench.results import DISPATCH, Comparison, Figure

LARGE_BYTES = 1 << 20
MANY_RECIPIENTS = 100  # RFC 5321 §4.5.3.1.8's minimum, and Dispatch's limit


def _shapes(ctx: Context) -> tuple[tuple[str, int, int, int], ...]:
    """(label, message bytes, recipients, messages per run)."""
    plan = ctx.plan
    return (
        ("1 MiB message", LARGE_BYTES, 1, plan.shape_large_messages),
        (f"{MANY_RECIPIENTS} recipients per message", MESSAGE_BYTES, MANY_RECIPIENTS,
         plan.shape_rcpt_messages),
    )  # fmt: skip


def measure(ctx: Context) -> Figure:
    plan = ctx.plan
    shapes = _shapes(ctx)
    method = (
        f"`smtp-source -d -s {SESSIONS} -m M -l BYTES [-r {MANY_RECIPIENTS}]` against each "
        "server with onward delivery held, timed from outside: "
        + "; ".join(f"{label}: M = {messages}" for label, _, _, messages in shapes)
        + f" (time limit {plan.shape_timeout:.0f} s per run). Every server fsyncs before its "
        "250. Rounds are interleaved, who goes first rotating; CPU is the servers' own "
        f"(all their processes). N = {plan.rounds}."
    )
    figure = Figure("shapes", "Message shapes: 1 MiB messages, 100 recipients", method)
    closed_port = free_port()  # held relays point here; nothing listens on it
    with started(ctx, ctx.peers, RelayMode.HELD, lambda _: closed_port, "shapes") as (
        servers,
        missing,
    ):
        figure.not_measured += missing
        for label, size, recipients, messages in shapes:
            for number in range(plan.rounds):
                for server in rotated(servers, number):
                    ctx.say(f"  {label} round {number + 1}: {server.name}")
                    _one_run(ctx, figure, server, label, size, recipients, messages, number)
                    settle()
        _compare(figure, servers, [label for label, *_ in shapes])
        dispatch = next((s for s in servers if isinstance(s, DispatchServer)), None)
        if dispatch is not None:
            label, size, recipients, _ = shapes[0]
            rate = figure.peer_series[DISPATCH][f"msgs/s, {label}"].median
            count = int((rate if rate == rate else 20.0) * (plan.profile_seconds + 3))

            def load() -> None:
                run_source(
                    dispatch.port,
                    max(count, SESSIONS),
                    reuse=True,
                    timeout=plan.profile_seconds + 30,
                    log_path=ctx.work / "smtp-source-shapes-flame.out",
                    message_bytes=size,
                    recipients=recipients,
                )

            flame_graph(ctx, figure, dispatch, load)
    return figure


def _one_run(
    ctx: Context,
    figure: Figure,
    server: Server,
    label: str,
    size: int,
    recipients: int,
    messages: int,
    number: int,
) -> None:
    window = cpu_window(server)
    window.start()
    run = run_source(
        server.port,
        messages,
        reuse=True,
        timeout=ctx.plan.shape_timeout,
        log_path=ctx.work / "smtp-source-shapes.out",
        message_bytes=size,
        recipients=recipients,
    )
    window.stop()
    figure.series(server.name, f"msgs/s, {label}", "msgs/s").values.append(run.rate)
    if run.messages:
        cpu_ms = window.cpu * 1000 / run.messages
        figure.series(server.name, f"CPU ms/message, {label}", "ms").values.append(cpu_ms)
    if run.error:
        figure.notes.append(
            f"{server.name}, {label}, round {number + 1}: {run.messages} of {messages} "
            f"messages in {run.seconds:.1f} s ({run.error})."
        )


def _compare(figure: Figure, servers: list[Server], labels: list[str]) -> None:
    ours = figure.peer_series.get(DISPATCH, {})
    for label in labels:
        metric = f"msgs/s, {label}"
        if metric not in ours:
            continue
        for server in servers:
            theirs = figure.peer_series.get(server.name, {}).get(metric)
            if server.name != DISPATCH and theirs is not None:
                figure.comparisons.append(Comparison(metric, server.name, ours[metric], theirs))
