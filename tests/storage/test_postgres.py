"""What only the PostgreSQL backend does: the pool, its deadlines, back-off and the migration
lock, against the session's real PostgreSQL 15 (the engine-neutral suite runs on it too)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio

from dispatch.storage import (
    MIGRATIONS,
    DatabaseUnavailableError,
    Migration,
    PostgresDatabase,
    SqlCursor,
    open_store,
)
from dispatch.storage.postgres import to_psycopg
from tests.storage.conftest import BASE, PgDb, Watchdog, assert_exactly_once, received, running
from tests.storage.test_storage_outages import record_spread_out
from tests.support.postgres import Cluster
from tests.support.waiting import wait_until

TIMEOUT_NAMED = r"timeout \(database\.statement_timeout_seconds = 0\.3\)"


def count_versions(cursor: SqlCursor) -> int:
    cursor.execute("SELECT COUNT(*) FROM schema_version")
    return int(cursor.fetchone()[0])


def sessions(url: str, application: str) -> int:
    with psycopg.connect(url) as pg:
        row = pg.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_placeholders_are_translated_and_percent_signs_kept() -> None:
    assert to_psycopg("SELECT ? WHERE x LIKE '%a' AND y = ?") == (
        "SELECT %s WHERE x LIKE '%%a' AND y = %s"
    )


async def test_nodes_starting_together_apply_each_migration_once(postgres_url: str) -> None:
    slow = Migration(
        MIGRATIONS[-1].version + 1,
        "slow on purpose: both nodes wait on it",
        ("SELECT pg_sleep(0.5)", "CREATE TABLE relay_notes (id {serial_pk}, note TEXT)"),
    )
    databases = [PostgresDatabase(postgres_url, migrations=(*MIGRATIONS, slow)) for _ in range(3)]
    counts: list[int] = []

    async def open_one(database: PostgresDatabase) -> None:
        counts.append(await database.read(count_versions))

    async with trio.open_nursery() as nursery:
        for database in databases:
            nursery.start_soon(open_one, database)
    for database in databases:
        await database.aclose()
    assert counts == [len(MIGRATIONS) + 1] * 3
    with psycopg.connect(postgres_url) as pg:
        versions = [v for (v,) in pg.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == [*(m.version for m in MIGRATIONS), slow.version]


async def test_the_pool_never_opens_more_than_pool_size_connections(postgres_url: str) -> None:
    database = PostgresDatabase(postgres_url, pool_size=2, application_name="pool-test")
    peak = 0

    def hold(cursor: SqlCursor) -> None:
        cursor.execute("SELECT pg_sleep(0.2)")

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await trio.to_thread.run_sync(sessions, postgres_url, "pool-test"))
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        async with trio.open_nursery() as readers:
            for _ in range(6):
                readers.start_soon(database.read, hold)
        nursery.cancel_scope.cancel()
    await database.aclose()
    assert peak == 2
    wait_until(lambda: sessions(postgres_url, "pool-test") == 0, what="connections closed")


async def test_an_unreachable_server_is_reported_without_the_password_and_backed_off() -> None:
    with trio.socket.socket() as probe:  # a port nothing listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = PostgresDatabase(f"postgresql://dispatch:s3cret@127.0.0.1:{port}/dispatch")
    with pytest.raises(DatabaseUnavailableError) as first:
        await database.read(count_versions)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as second:
        await database.read(count_versions)
    assert time.monotonic() - started < 0.05  # answered from the back-off, no new attempt
    for caught in (first, second):
        message = str(caught.value)
        assert "s3cret" not in message
        assert f"postgresql://dispatch:<redacted>@127.0.0.1:{port}/dispatch" in message
    assert "connecting again in" in str(second.value)
    await trio.sleep(0.15)  # the first back-off is 0.1 s: the next call connects again
    with pytest.raises(DatabaseUnavailableError) as third:
        await database.read(count_versions)
    assert "connecting again in" not in str(third.value)


@contextmanager
def message_log_locked(url: str) -> Iterator[None]:
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as connection:
            connection.execute("LOCK TABLE message_log IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join()


async def test_a_lock_held_past_the_statement_timeout_is_an_outage(postgres_url: str) -> None:
    database = PostgresDatabase(postgres_url, statement_timeout=0.3)
    await database.read(count_versions)  # migrated

    def insert(cursor: SqlCursor) -> None:
        cursor.execute("DELETE FROM message_log WHERE id = ?", (1,))

    with message_log_locked(postgres_url):
        started = time.monotonic()
        with pytest.raises(
            DatabaseUnavailableError,
            match=r"timeout \(database\.statement_timeout_seconds = 0\.3\)",
        ):
            await database.write(insert)
        waited = time.monotonic() - started
    await database.write(insert)  # the connection was kept and works again
    await database.aclose()
    assert 0.25 < waited < 1.3


async def test_a_stopped_server_fails_the_hop_at_its_deadline_and_frees_it(
    postgres_url: str, postgres_cluster: Cluster
) -> None:
    database = PostgresDatabase(postgres_url, statement_timeout=0.5, pool_size=1)
    await database.read(count_versions)  # connected and migrated
    with postgres_cluster.paused():
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match=r"no answer within 1\.5 s"):
            await database.read(count_versions)
        waited = time.monotonic() - started
        # The abandoned hop gave its connection up: the pool of one is free for the next.
        with trio.move_on_after(3) as scope, pytest.raises(DatabaseUnavailableError):
            await database.read(count_versions)
        assert not scope.cancelled_caught
    with trio.fail_after(10):
        assert await database.read(count_versions) == len(MIGRATIONS)
    await database.aclose()
    assert 1.4 < waited < 2.5


@pytest.mark.parametrize("fault", ["restarted", "stopped"])
async def test_a_server_restarted_or_stopped_under_traffic_loses_no_row(
    tmp_path: Path, postgres_url: str, postgres_cluster: Cluster, fault: str
) -> None:
    """The log writer against a real outage: ``pg_ctl restart`` (connections killed) or the
    whole server SIGSTOPped for 2 s. Records keep coming; the event loop is never blocked;
    afterwards every row is in the database exactly once."""
    store = open_store(postgres_url, tmp_path, node_id="n1", statement_timeout=0.5)
    events = [received(i, at=BASE + i / 1000) for i in range(3000)]
    halfway, done = trio.Event(), trio.Event()

    def outage() -> None:
        if fault == "restarted":
            postgres_cluster.restart()
        else:
            with postgres_cluster.paused():
                time.sleep(2)

    async with running(store), trio.open_nursery() as nursery:
        watchdog = Watchdog(store.log)
        await nursery.start(watchdog.run)
        await store.log.wait_until_written()  # connected and migrated
        nursery.start_soon(
            partial(record_spread_out, store, events, per_tick=30, halfway=halfway, done=done)
        )
        await halfway.wait()
        await trio.to_thread.run_sync(outage)
        await done.wait()
        with trio.fail_after(30):
            await store.log.wait_until_written()
        nursery.cancel_scope.cancel()
    assert watchdog.saw_unreachable, "the outage was never noticed"
    assert not store.log.journal_path.exists()
    assert_exactly_once(PgDb(postgres_url), events)
    watchdog.assert_loop_never_blocked(min_ticks=100)
