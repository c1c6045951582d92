"""How much the database holds: rows per table and its size on disk (the Settings page).

:func:`database_usage` counts the rows of every table the migrations create (one ``COUNT(*)``
each, in one read; on SQLite a count walks the table's smallest index, ~10 ms per 100,000
rows here) and measures the database: the SQLite file with its write-ahead log, or
``pg_database_size`` on PostgreSQL. It is for a page an operator opens, not for a scrape:
never call it on a timer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import attrs
import trio

from dispatch.storage.database import Database, SqlCursor
from dispatch.storage.schema import MIGRATIONS
from dispatch.storage.sqlite import SqliteDatabase

_CREATE_TABLE: Final = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE)

_DROP_TABLE: Final = re.compile(r"DROP TABLE (?:IF EXISTS )?(\w+)", re.IGNORECASE)
_RENAME_TABLE: Final = re.compile(r"ALTER TABLE (\w+) RENAME TO (\w+)", re.IGNORECASE)


def _tables() -> tuple[str, ...]:
    """The tables the migrations leave, in the order they were first created."""
    tables: dict[str, None] = {"schema_version": None}
    for migration in MIGRATIONS:
        for statement in migration.statements:
            for match in _CREATE_TABLE.finditer(statement):
                tables[match.group(1)] = None
            for match in _DROP_TABLE.finditer(statement):
                tables.pop(match.group(1), None)
            for match in _RENAME_TABLE.finditer(statement):
                tables.pop(match.group(1), None)
                tables[match.group(2)] = None
    return tuple(tables)


TABLES: Final[tuple[str, ...]] = _tables()
"""Every table of the schema."""

_SQLITE_SUFFIXES: Final = ("", "-wal", "-shm")


@attrs.frozen
class DatabaseUsage:
    """Rows per table, and the bytes the database takes (None: not measurable here)."""

    description: str
    rows: dict[str, int]
    size_bytes: int | None


def _count_rows(cursor: SqlCursor) -> dict[str, int]:
    rows: dict[str, int] = {}
    for table in TABLES:  # names from our own schema, never from input
        cursor.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608
        rows[table] = int(cursor.fetchone()[0])
    return rows


def _file_sizes(path: Path) -> int:
    """Blocking: the SQLite file and its journal files, in bytes."""
    total = 0
    for suffix in _SQLITE_SUFFIXES:
        try:
            total += Path(f"{path}{suffix}").stat().st_size
        except FileNotFoundError:
            continue
    return total


def _server_size(cursor: SqlCursor) -> int:
    cursor.execute("SELECT pg_database_size(current_database())")
    return int(cursor.fetchone()[0])


async def database_usage(database: Database) -> DatabaseUsage:
    """Rows per table and the size. Raises ``DatabaseUnavailableError`` like any read."""
    rows = await database.read(_count_rows)
    if isinstance(database, SqliteDatabase):
        size: int | None = await trio.to_thread.run_sync(_file_sizes, database.path)
    else:
        size = await database.read(_server_size)
    return DatabaseUsage(database.description, rows, size)
