"""The schema: created at first use, migrated once per version, refused when too new."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import psycopg
import pytest

from dispatch.storage import (
    LATEST_VERSION,
    MIGRATIONS,
    DatabaseUnavailableError,
    Migration,
    PostgresDatabase,
    SqlCursor,
    SqliteDatabase,
    open_store,
    sqlite_path,
)
from dispatch.storage.schema import POSTGRESQL, SQLITE
from tests.storage.conftest import (
    DbRef,
    PgDb,
    database_for,
    execute,
    query,
    received,
    running,
    url_for,
)

TABLES = {
    "schema_version",
    "message_log",
    "message_log_addresses",
    "audit_log",
    "api_keys",
    "admin",
    "sessions",
    "counters",
    "minute_counters",
    "nodes",
    "suppressions",
}
INDEXES = {
    "message_log_message_id_at",
    "message_log_at",
    "message_log_event_at",
    "message_log_addresses_log_id",
    "audit_log_at",
    "sessions_expires_at",
    "message_log_key_at",
    "message_log_message_id_event",
    "suppressions_expires_at",
}


def names(db: DbRef, kind: str) -> set[str]:
    if isinstance(db, PgDb):
        if kind == "table":
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        else:  # indexes we created, not those of primary keys and UNIQUE constraints
            sql = (
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                "AND indexname NOT LIKE '%pkey' AND indexname NOT LIKE '%key'"
            )
        return {name for (name,) in query(db, sql)}
    rows = query(db, "SELECT name FROM sqlite_master WHERE type = ?", (kind,))
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def versions(db: DbRef) -> list[int]:
    return [v for (v,) in query(db, "SELECT version FROM schema_version ORDER BY version")]


def count_versions(cursor: SqlCursor) -> int:
    cursor.execute("SELECT COUNT(*) FROM schema_version")
    return int(cursor.fetchone()[0])


async def open_once(db: DbRef, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Open ``db`` (applying ``migrations``), close it; return the number of versions."""
    database = database_for(db, migrations)
    try:
        return await database.read(count_versions)
    finally:
        await database.aclose()


async def test_first_use_creates_the_file_the_schema_and_the_version(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "dispatch.db"
    database = SqliteDatabase(db)
    assert not db.exists()  # nothing happens before first use
    assert await database.read(count_versions) == len(MIGRATIONS)
    await database.aclose()
    assert names(db, "table") == TABLES
    assert names(db, "index") == INDEXES
    assert versions(db) == [m.version for m in MIGRATIONS]
    assert versions(db)[-1] == LATEST_VERSION
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o700
    unique = query(db, "SELECT sql FROM sqlite_master WHERE name = 'message_log'")[0][0]
    assert "event_id TEXT NOT NULL UNIQUE" in unique


async def test_first_use_creates_the_schema_on_either_engine(db: DbRef) -> None:
    assert await open_once(db) == len(MIGRATIONS)
    assert names(db, "table") == TABLES
    assert names(db, "index") == INDEXES
    assert versions(db) == [m.version for m in MIGRATIONS]


async def test_opening_again_applies_nothing_twice(db: DbRef, tmp_path: Path) -> None:
    for round_ in range(3):
        store = open_store(url_for(db), tmp_path)
        async with running(store):
            store.log.record(received(round_))
            await store.log.wait_until_written()
    assert versions(db) == [m.version for m in MIGRATIONS]
    assert query(db, "SELECT COUNT(*) FROM message_log") == [(3,)]


async def test_a_new_migration_is_applied_once(db: DbRef) -> None:
    await open_once(db)
    extended = (
        *MIGRATIONS,
        Migration(
            LATEST_VERSION + 1,
            "relay notes",
            (
                "CREATE TABLE relay_notes (id {serial_pk}, note TEXT)",
                "CREATE INDEX relay_notes_note ON relay_notes (note)",
            ),
        ),
    )
    for _ in range(2):
        assert await open_once(db, extended) == len(extended)
    assert versions(db) == [*(m.version for m in MIGRATIONS), LATEST_VERSION + 1]
    assert "relay_notes" in names(db, "table")


async def test_a_failing_migration_leaves_no_trace(db: DbRef) -> None:
    broken = (
        *MIGRATIONS,
        Migration(LATEST_VERSION + 1, "broken", ("CREATE TABLE half (x TEXT)", "CREATE TABLE (")),
    )
    with pytest.raises(DatabaseUnavailableError, match="syntax error"):
        await open_once(db, broken)
    assert versions(db) == [m.version for m in MIGRATIONS]  # earlier ones stay applied
    assert "half" not in names(db, "table")  # the failed one is rolled back whole


async def test_a_schema_from_a_newer_dispatch_is_refused(db: DbRef) -> None:
    await open_once(db)
    execute(db, "INSERT INTO schema_version VALUES (99, 'future', 0)")
    with pytest.raises(DatabaseUnavailableError, match="schema version 99, newer than"):
        await open_once(db)


def test_migration_versions_must_increase(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="strictly increase"):
        SqliteDatabase(tmp_path / "x.db", migrations=(*MIGRATIONS, *MIGRATIONS))


def test_migrations_are_written_for_sqlite_and_postgresql() -> None:
    for migration in MIGRATIONS:
        sqlite_text = " ".join(migration.render(SQLITE))
        postgres_text = " ".join(migration.render(POSTGRESQL))
        assert "{" not in sqlite_text
        assert "{" not in postgres_text
        assert "INTEGER PRIMARY KEY" not in postgres_text.replace(
            "id INTEGER PRIMARY KEY CHECK", ""
        )
        for sqlite_only in ("AUTOINCREMENT", "WITHOUT ROWID", "INSERT OR", "PRAGMA", " REAL"):
            assert sqlite_only not in sqlite_text.upper()
        assert not re.search(r"\bDATETIME\b|\bBLOB\b", sqlite_text)


def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///./.dispatch/dispatch.db") == tmp_path / ".dispatch/dispatch.db"
    assert sqlite_path("sqlite:///relative.db") == tmp_path / "relative.db"
    assert sqlite_path("sqlite:////var/lib/dispatch/d.db") == Path("/var/lib/dispatch/d.db")
    assert sqlite_path("sqlite:////srv/with%20space.db") == Path("/srv/with space.db")
    for bad in ("sqlite://x.db", "sqlite:///", "sqlite:///:memory:", "sqlite:///a.db?mode=ro"):
        with pytest.raises(ValueError, match=r"database\.url"):
            sqlite_path(bad)
    postgres = open_store("postgresql://dispatch:s3cret@db.example.test/dispatch", tmp_path)
    assert isinstance(postgres.database, PostgresDatabase)
    assert (
        postgres.database.description == "postgresql://dispatch:<redacted>@db.example.test/dispatch"
    )
    with pytest.raises(ValueError, match="unknown database 'mysql'"):
        open_store("mysql://x", tmp_path)
    store = open_store("sqlite:///./.dispatch/dispatch.db", "./.dispatch")
    assert store.database.description == f"sqlite:///{tmp_path}/.dispatch/dispatch.db"
    assert store.log.journal_path == tmp_path / ".dispatch" / "message-log.journal"


async def test_a_bug_in_work_escapes_unchanged_and_the_connection_goes_on(db: DbRef) -> None:
    database = database_for(db)
    insert = "INSERT INTO counters (day, event, relay, count) VALUES ('d', 'received', '', 1)"

    def insert_then_fail(cursor: SqlCursor) -> None:
        cursor.execute(insert)
        raise ZeroDivisionError

    def insert_twice(cursor: SqlCursor) -> None:
        cursor.execute(insert)
        cursor.execute(insert)

    def count(cursor: SqlCursor) -> int:
        cursor.execute("SELECT COUNT(*) FROM counters")
        return int(cursor.fetchone()[0])

    with pytest.raises(ZeroDivisionError):
        await database.write(insert_then_fail)
    integrity = psycopg.IntegrityError if isinstance(db, PgDb) else sqlite3.IntegrityError
    with pytest.raises(integrity):  # a bug, not an outage
        await database.write(insert_twice)
    assert await database.read(count) == 0  # both rolled back
    await database.write(lambda cursor: cursor.execute(insert))
    assert await database.read(count) == 1
    await database.aclose()
