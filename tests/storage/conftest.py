"""Helpers for storage tests: a running store, event factories, a loop watchdog, mounts.

The suite runs against both engines: the :func:`db` fixture is parametrised, giving a real
SQLite file under ``tmp_path`` or a fresh database of the session's real PostgreSQL 15
(``tests/support/postgres.py``), and the helpers here (:func:`url_for`, :func:`query`,
:func:`database_for`, ...) accept either, so every test written against ``db`` makes the
same assertions on both. Tests about one engine's own failure modes (a deleted file, a
stopped server) ask for ``tmp_path`` or ``postgres_url`` instead.

The outage tests need real outages: a tmpfs that fills up and a read-only bind mount, which
need root (CI has it). Like the spool's disk-full tests they fail rather than skip without it.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from dispatch.lifecycle import Shutdown
from dispatch.storage import (
    MIGRATIONS,
    Database,
    MessageEvent,
    MessageLog,
    Migration,
    PostgresDatabase,
    SqliteDatabase,
    Store,
    open_store,
)
from dispatch.storage.postgres import to_psycopg

# 2027-01-15T08:00:00Z, exactly on a minute: tests say "today" and "5 minutes ago" about it.
BASE = 1_800_000_000.0
DAY = 86_400.0


class PgDb(str):
    """The URL of a PostgreSQL test database, where SQLite tests pass the file's path."""


DbRef = Path | PgDb

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> DbRef:
    """The database of one test, on each engine in turn (not created yet on SQLite)."""
    if request.param == "sqlite":
        return tmp_path / "data" / "dispatch.db"
    return PgDb(request.getfixturevalue("postgres_url"))


class Outage:
    """A database of the test's engine that cannot be used until :meth:`end`.

    SQLite: its directory is a file. PostgreSQL: the database does not exist yet (the server
    answers "database ... does not exist", an outage like any other to Dispatch).
    """

    def __init__(self, db: DbRef, tmp_path: Path) -> None:
        if isinstance(db, PgDb):
            self.db: DbRef = PgDb(db.rpartition("/")[0] + "/" + db.rpartition("/")[2] + "_later")
        else:
            self._blocker = tmp_path / "not-a-directory"
            self._blocker.write_text("a file where the database's directory should be")
            self.db = self._blocker / "dispatch.db"

    def end(self) -> None:
        if isinstance(self.db, PgDb):
            base, _, name = self.db.rpartition("/")
            with psycopg.connect(f"{base}/postgres", autocommit=True) as pg:
                pg.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        else:
            self._blocker.unlink()


@pytest.fixture
def outage(db: DbRef, tmp_path: Path) -> Outage:
    """A database that is down until ``outage.end()``, on each engine (see :class:`Outage`)."""
    return Outage(db, tmp_path)


def url_for(db: DbRef) -> str:
    return db if isinstance(db, PgDb) else f"sqlite:///{db}"


def database_for(db: DbRef, migrations: tuple[Migration, ...] = MIGRATIONS) -> Database:
    if isinstance(db, PgDb):
        return PostgresDatabase(db, migrations=migrations)
    return SqliteDatabase(db, migrations=migrations)


def make_store(db: DbRef, data_dir: Path) -> Store:
    return open_store(url_for(db), data_dir)


@asynccontextmanager
async def running(store: Store) -> AsyncIterator[Shutdown]:
    """Run ``store`` as the supervisor would; on exit request a stop and wait for it."""
    shutdown = Shutdown(grace_seconds=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run, shutdown)
        yield shutdown
        shutdown.request()


def received(number: int = 0, *, at: float = BASE, **fields: Any) -> MessageEvent:
    """A ``received`` event for message ``msg-<number>``."""
    values: dict[str, Any] = {
        "message_id": f"msg-{number}",
        "event": "received",
        "at": at,
        "source": "smtp",
        "sender": "app@example.test",
        "recipients": ("rcpt@example.test",),
    }
    values.update(fields)
    return MessageEvent(**values)


def query(db: DbRef, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
    """Rows of ``sql`` read with a separate plain connection (blocking: call when idle)."""
    if isinstance(db, PgDb):
        with psycopg.connect(db, autocommit=True) as pg:
            return pg.execute(to_psycopg(sql), params).fetchall()
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql, params).fetchall()


def execute(db: DbRef, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run one statement and commit it, with a separate plain connection."""
    if isinstance(db, PgDb):
        with psycopg.connect(db, autocommit=True) as pg:
            pg.execute(to_psycopg(sql), params)
        return
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.execute(sql, params)


def row_count(db: DbRef, table: str = "message_log") -> int:
    return int(query(db, f"SELECT COUNT(*) FROM {table}")[0][0])  # noqa: S608


def assert_exactly_once(db: DbRef, events: list[MessageEvent]) -> None:
    """Every event is in ``message_log`` once, nothing else is, and the counters agree."""
    ids = [row[0] for row in query(db, "SELECT event_id FROM message_log")]
    assert sorted(ids) == sorted(e.event_id for e in events)
    day_total = query(db, "SELECT SUM(count) FROM counters")[0][0]
    minute_total = query(db, "SELECT SUM(count) FROM minute_counters")[0][0]
    assert day_total == minute_total == len(events)


class Watchdog:
    """A task ticking every 10 ms: shows that the event loop was never blocked.

    It also samples the log's health attributes, to show what ``/health`` would have seen.
    """

    def __init__(self, log: MessageLog) -> None:
        self.log = log
        self.ticks = 0
        self.longest_gap = 0.0
        self.saw_unreachable = False
        self.errors: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        last = trio.current_time()
        while True:
            await trio.sleep(0.01)
            now = trio.current_time()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now
            self.ticks += 1
            if not self.log.database_reachable:
                self.saw_unreachable = True
            if self.log.last_error:
                self.errors.add(self.log.last_error)

    def assert_loop_never_blocked(self, min_ticks: int) -> None:
        # The database's busy timeout is 1 s: a database call on the loop would show here.
        assert self.ticks >= min_ticks
        assert self.longest_gap < 0.5, f"the event loop was blocked for {self.longest_gap:.2f} s"


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(
            f"mount {' '.join(args)} failed: {done.stderr.strip() or done.returncode}. "
            "The storage outage tests need root (CI runs as root); run them as root."
        )


def unmount(path: Path) -> None:
    # Lazy: still detaches it if a failing test left a file open.
    subprocess.run(["umount", "--lazy", str(path)], check=True)


TMPFS_SIZE = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: room for a database, and a disk that can really be filled."""
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    mount("-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mountpoint))
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``(directory, view)``: ``view`` shows ``directory`` through a read-only bind mount.

    As root, permission bits do not stop writes; a read-only mount does (EROFS).
    ``mount("-o", "remount,bind,rw", str(view))`` makes it writable again.
    """
    directory = tmp_path / "writable"
    view = tmp_path / "view"
    directory.mkdir()
    view.mkdir()
    mount("--bind", str(directory), str(view))
    try:
        mount("-o", "remount,bind,ro", str(view))
        yield directory, view
    finally:
        unmount(view)
