"""Figure: the message log on PostgreSQL beside SQLite, in the same run (docs/scaling.md).

Two measurements per engine, the engines alternating over N rounds, a fresh database each:

- **log writes/s**: the daemon's own log writer (:class:`dispatch.storage.MessageLog`, in this
  process under Trio) is handed R ``received`` events at once (one recipient each) and writes
  them in its batches of 500 with their address rows and counters; rate = R / (first record →
  every row committed). PostgreSQL is a throwaway cluster on loopback with the server's
  defaults (``fsync`` and ``synchronous_commit`` on); SQLite is a file in WAL mode.
- **end to end**: Dispatch with ``database.url`` on that engine relays M messages from
  smtp-source to ``smtp-sink -c`` as in the end-to-end figure; then the time until the log
  holds every ``received`` and ``delivered`` row (it is written beside the flow, never on it).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg
import trio

from bench.figures.common import Context, rotated, settle
from bench.load import run_source
from bench.peers.base import RelayMode
from bench.peers.dispatch_daemon import DispatchOptions, start_dispatch
from bench.peers.sink import start_sink
from bench.pg_cluster import NoPostgres, pg_cluster
from bench.procs import StartError
from bench.results import Figure, NotMeasured
from dispatch.lifecycle import Shutdown
from dispatch.storage import MessageEvent, open_store

SQLITE, POSTGRES = "Dispatch, SQLite", "Dispatch, PostgreSQL"
WRITES, E2E, CATCH_UP = "log writes/s", "msgs/s end to end", "log complete after the sink"


def measure(ctx: Context) -> Figure:
    plan = ctx.plan
    records = plan.e2e_messages * 20
    method = (
        f"Log writes: the daemon's log writer, in process, writes R = {records:,} `received` "
        "events handed to it at once (batches of 500, address rows and counters included); "
        "rate = R / time until all are committed. End to end: Dispatch on that engine relays "
        f"M = {plan.e2e_messages} messages from smtp-source (20 sessions, `-d`) to "
        "`smtp-sink -c`; then the wait until the log holds all 2M rows. PostgreSQL 15: a "
        "throwaway cluster on 127.0.0.1 with the server's defaults (fsync on); SQLite: WAL, "
        f"synchronous=NORMAL. N = {plan.rounds} rounds, engines alternating."
    )
    figure = Figure("database", "Message log: PostgreSQL beside SQLite", method)
    try:
        with pg_cluster(ctx.work / "postgres") as new_database:
            serial = 0

            def fresh(engine: str, directory: Path) -> str:
                nonlocal serial
                serial += 1
                if engine == POSTGRES:
                    return new_database(f"bench_{serial}")
                return f"sqlite:///{directory / 'dispatch.db'}"

            for number in range(plan.rounds):
                for engine in rotated([SQLITE, POSTGRES], number):
                    ctx.say(f"  database round {number + 1}: {engine}")
                    directory = ctx.directory(f"database-{number}")
                    rate = trio.run(_log_writes, fresh(engine, directory), directory, records)
                    figure.series(engine, WRITES, "rows/s").values.append(rate)
                    e2e_dir = ctx.directory(f"database-e2e-{number}")
                    _end_to_end(ctx, figure, engine, fresh(engine, e2e_dir), e2e_dir)
                    settle()
    except (NoPostgres, StartError) as exc:
        figure.not_measured.append(NotMeasured(POSTGRES, str(exc)))
        return figure
    # Not a Comparison: those are Dispatch against a peer in the summary; here both are ours.
    for metric, unit in ((WRITES, "rows/s"), (E2E, "msgs/s")):
        ours, base = figure.series(POSTGRES, metric, unit), figure.series(SQLITE, metric, unit)
        if ours.values and base.values and base.median:
            figure.notes.append(
                f"{metric}: PostgreSQL {ours.median:,.0f} vs SQLite {base.median:,.0f} {unit} "
                f"(PostgreSQL / SQLite = {ours.median / base.median:.2f})."
            )
    return figure


async def _log_writes(url: str, directory: Path, records: int) -> float:
    store = open_store(url, directory / "data", node_id="bench")
    events = [
        MessageEvent(
            message_id=f"spl_{n:026d}",
            event="received",
            at=time.time(),
            source="smtp",
            sender="app@example.com",
            recipients=(f"user{n % 1000}@example.org",),
            subject=f"bench {n}",
            size=5120,
        )
        for n in range(records)
    ]
    shutdown = Shutdown(grace_seconds=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run, shutdown)
        await store.log.wait_until_written()  # the schema applied: not part of the figure
        began = time.perf_counter()
        for event in events:
            store.log.record(event)
        await store.log.wait_until_written()
        took = time.perf_counter() - began
        shutdown.request()
    if store.log.written_total != records:
        raise RuntimeError(f"{store.log.written_total} of {records} rows written")
    return records / took


def _rows(url: str) -> int:
    sql = "SELECT COUNT(*) FROM message_log WHERE event IN ('received', 'delivered')"
    if url.startswith("postgresql"):
        with psycopg.connect(url) as connection:
            row = connection.execute(sql).fetchone()
    else:
        file = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            row = file.execute(sql).fetchone()
        finally:
            file.close()
    return int(row[0]) if row else 0


def _end_to_end(ctx: Context, figure: Figure, engine: str, url: str, directory: Path) -> None:
    plan = ctx.plan
    sink = start_sink(ctx.launcher, "smtp-sink-database")
    server = start_dispatch(
        ctx.launcher,
        directory,
        RelayMode.SINK,
        sink.port,
        DispatchOptions(database_url=url),
        name="dispatch-database",
    )
    try:
        began = time.monotonic()
        run = run_source(
            server.port,
            plan.e2e_messages,
            reuse=True,
            timeout=plan.e2e_timeout,
            log_path=ctx.work / "smtp-source.out",
        )
        arrived = sink.wait_for(run.messages, plan.e2e_timeout)
        end = arrived if arrived is not None else time.monotonic()
        figure.series(engine, E2E, "msgs/s").values.append(sink.delivered() / (end - began))
        deadline = time.monotonic() + plan.e2e_timeout
        while _rows(url) < 2 * run.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        figure.series(engine, CATCH_UP, "s").values.append(time.monotonic() - end)
    finally:
        ctx.launcher.stop(server.child, sink.child)
