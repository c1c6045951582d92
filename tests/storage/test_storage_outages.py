"""Real database outages while events flow: no row lost, none doubled, the loop never blocked.

Each test breaks the database for real — deletes its file, locks it from another
connection, fills its disk, mounts it read-only, or puts it where it cannot be created —
records events through it, repairs it, and checks that every event is in ``message_log``
exactly once with counters that agree.

Read-only as root: permission bits do not stop root, so the database is reached through a
read-only bind mount (EROFS), which does.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from dispatch.storage import MessageEvent, Store
from dispatch.storage.database import DatabaseUnavailableError, SqlCursor
from dispatch.storage.sqlite import SqliteDatabase
from tests.conftest import fill
from tests.storage.conftest import (
    Outage,
    Watchdog,
    assert_exactly_once,
    make_store,
    mount,
    received,
    row_count,
    running,
)
from tests.support.waiting import wait_until_async


async def record_spread_out(
    store: Store,
    events: list[MessageEvent],
    *,
    per_tick: int,
    halfway: trio.Event,
    done: trio.Event,
) -> None:
    """Record ``per_tick`` events every 10 ms; set ``halfway``, then ``done``."""
    for start in range(0, len(events), per_tick):
        if start >= len(events) // 2:
            halfway.set()
        for event in events[start : start + per_tick]:
            store.log.record(event)
        await trio.sleep(0.01)
    done.set()


def delete_file(db: Path) -> None:
    db.unlink()


def delete_file_and_wal(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def delete_directory(db: Path) -> None:
    shutil.rmtree(db.parent)


@pytest.mark.parametrize("delete", [delete_file, delete_file_and_wal, delete_directory])
async def test_deleted_database_is_restored_with_every_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, delete: object
) -> None:
    assert callable(delete)
    db = tmp_path / "data" / "dispatch.db"
    store = make_store(db, db.parent)
    events = [received(i) for i in range(400)]
    halfway, done = trio.Event(), trio.Event()
    async with running(store), trio.open_nursery() as nursery:
        watchdog = Watchdog(store.log)
        await nursery.start(watchdog.run)
        nursery.start_soon(
            lambda: record_spread_out(store, events, per_tick=10, halfway=halfway, done=done)
        )
        await halfway.wait()
        await wait_until_async(lambda: store.log.written_total > 0)
        old_inode = db.stat().st_ino
        await trio.to_thread.run_sync(delete, db)
        await done.wait()
        with trio.fail_after(10):
            await store.log.wait_until_written()
        nursery.cancel_scope.cancel()
    assert db.stat().st_ino != old_inode  # a new file ...
    assert_exactly_once(db, events)  # ... holding the rows written before the deletion too
    assert "was deleted while in use: restored it" in caplog.text
    watchdog.assert_loop_never_blocked(min_ticks=20)


async def test_locked_database_journals_then_every_row_lands_once(tmp_path: Path) -> None:
    db = tmp_path / "dispatch.db"
    store = make_store(db, tmp_path)
    first = received(0)
    events = [first, *(received(i) for i in range(1, 1001))]
    locked = threading.Event()

    def hold_write_lock(seconds: float) -> None:
        # Longer than the busy timeout (1 s), so the writer's first attempt surely fails.
        with sqlite3.connect(db, timeout=5, isolation_level=None) as other:
            other.execute("BEGIN EXCLUSIVE")
            locked.set()
            time.sleep(seconds)
            other.execute("COMMIT")
        other.close()

    async with running(store), trio.open_nursery() as nursery:
        watchdog = Watchdog(store.log)
        await nursery.start(watchdog.run)
        store.log.record(first)
        await store.log.wait_until_written()
        nursery.start_soon(trio.to_thread.run_sync, hold_write_lock, 1.5)
        await trio.to_thread.run_sync(locked.wait)
        for event in events[1:]:
            store.log.record(event)
        assert store.log.pending == 1000
        await wait_until_async(lambda: store.log.journaled_total == 1000)
        assert not store.log.database_reachable
        assert store.log.pending == 1000  # in the journal now, still not in the database
        with trio.fail_after(10):
            await store.log.wait_until_written()
        nursery.cancel_scope.cancel()
    assert store.log.database_reachable
    assert store.log.last_error is None
    assert not store.log.journal_path.exists()
    assert any("database is locked" in error for error in watchdog.errors)
    assert_exactly_once(db, events)
    watchdog.assert_loop_never_blocked(min_ticks=50)


async def test_database_that_cannot_be_created_is_journaled_until_it_can(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's directory should be")
    db = blocker / "dispatch.db"
    store = make_store(db, tmp_path / "data")
    events = [received(i) for i in range(50)]
    async with running(store):
        for event in events:
            store.log.record(event)
        await wait_until_async(lambda: store.log.journaled_total == 50)
        assert not store.log.database_reachable
        assert store.log.last_error is not None
        assert str(blocker) in store.log.last_error
        assert store.log.pending == 50
        assert len(store.log.journal_path.read_bytes().splitlines()) == 50
        blocker.unlink()
        with trio.fail_after(10):
            await store.log.wait_until_written()
        assert store.log.database_reachable
    assert_exactly_once(db, events)


async def test_read_only_database_is_journaled_until_writable(
    tmp_path: Path, read_only_view: tuple[Path, Path]
) -> None:
    directory, view = read_only_view
    before = [received(i) for i in range(5)]
    setup = make_store(directory / "dispatch.db", tmp_path / "data")
    async with running(setup):
        for event in before:
            setup.log.record(event)
    store = make_store(view / "dispatch.db", tmp_path / "data")
    events = [received(i) for i in range(5, 105)]
    async with running(store):
        for event in events:
            store.log.record(event)
        await wait_until_async(lambda: store.log.journaled_total == 100)
        assert not store.log.database_reachable
        assert "is read-only" in (store.log.last_error or "")
        mount("-o", "remount,bind,rw", str(view))
        with trio.fail_after(10):
            await store.log.wait_until_written()
    assert_exactly_once(directory / "dispatch.db", before + events)


@pytest.mark.parametrize("journal_on_full_disk", [False, True])
async def test_full_disk(tmp_path: Path, tmpfs: Path, journal_on_full_disk: bool) -> None:
    db = tmpfs / "dispatch.db"
    store = make_store(db, tmpfs if journal_on_full_disk else tmp_path / "data")
    first = received(0)
    events = [received(i, subject="s" * 200) for i in range(1, 501)]
    async with running(store):
        store.log.record(first)
        await store.log.wait_until_written()
        filler = tmpfs / "filler"
        await trio.to_thread.run_sync(lambda: fill(filler, leave_pages=0))
        for event in events:
            store.log.record(event)
        await wait_until_async(lambda: not store.log.database_reachable)
        assert "full" in (store.log.last_error or "")
        if journal_on_full_disk:
            # Nowhere to write: the records wait in memory, and are still counted as pending.
            await wait_until_async(lambda: "journal" in (store.log.last_error or ""))
            assert store.log.journaled_total == 0
            assert store.log.pending == 500
        else:
            await wait_until_async(lambda: store.log.journaled_total == 500)
        await trio.to_thread.run_sync(filler.unlink)
        with trio.fail_after(10):
            await store.log.wait_until_written()
    assert_exactly_once(db, [first, *events])


async def test_writer_logs_the_outage_once_and_the_recovery(
    tmp_path: Path, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatch.storage")
    store = make_store(outage.db, tmp_path)
    async with running(store):
        for i in range(20):
            store.log.record(received(i))
            await trio.sleep(0.02)  # several failed attempts
        outage.end()
        await store.log.wait_until_written()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("database unreachable" in m for m in messages) == 1
    assert sum("database reachable again" in m for m in messages) == 1


async def test_reachability_is_known_without_any_traffic(tmp_path: Path, outage: Outage) -> None:
    store = make_store(outage.db, tmp_path)
    async with running(store):
        await wait_until_async(lambda: store.log.last_error is not None)
        assert not store.log.database_reachable
        assert store.log.pending == 0
        outage.end()
        # Retried with nothing to write.
        await wait_until_async(lambda: store.log.database_reachable)
        assert store.log.last_error is None
    assert row_count(outage.db) == 0  # opened and migrated, nothing written


def insert_then(change: Callable[[], object]) -> Callable[[SqlCursor], None]:
    """A write that inserts one row, then changes the file under the open transaction."""

    def work(cursor: SqlCursor) -> None:
        cursor.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
        cursor.execute("INSERT INTO t VALUES (1)")
        change()

    return work


async def test_database_deleted_during_a_write_keeps_the_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "dispatch.db"
    database = SqliteDatabase(db)
    await database.write(insert_then(lambda: None))
    old_inode = db.stat().st_ino
    await database.write(insert_then(lambda: delete_file_and_wal(db)))  # succeeds
    await database.aclose()
    assert db.stat().st_ino != old_inode
    assert row_count(db, "t") == 2
    assert "was deleted while in use: restored it" in caplog.text


async def test_database_replaced_during_a_write_fails_the_write(tmp_path: Path) -> None:
    db = tmp_path / "dispatch.db"
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    database = SqliteDatabase(db)
    await database.write(insert_then(lambda: None))
    with pytest.raises(DatabaseUnavailableError, match="replaced during a write"):
        await database.write(insert_then(lambda: other.replace(db)))
    await database.aclose()
