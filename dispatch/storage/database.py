"""What the rest of storage needs from a database engine: :class:`Database`.

The log writer, the queries and the purge are written against this protocol, never against
``sqlite3``: each hands the database a plain synchronous function of a DB-API cursor, and
the database runs it in a worker thread, inside one transaction, and returns its result.
:class:`~dispatch.storage.sqlite.SqliteDatabase` is the embedded implementation; a
PostgreSQL one (a psycopg connection per thread, the same schema) slots in beside it.

SQL given to a cursor uses ``?`` placeholders (see ``schema.py`` for the portable subset).

Errors: anything that means "the database cannot be used right now" (file missing and not
creatable, locked, read-only, disk full, server down, schema from a newer Dispatch) is raised
as :class:`DatabaseUnavailableError`, with a one-line reason for ``/health`` and the log.
Other exceptions are bugs and escape as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol


class DatabaseUnavailableError(Exception):
    """The database cannot be used right now; the operation may succeed later."""


class SqlCursor(Protocol):
    """The subset of a DB-API 2 cursor that storage uses."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> object: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class Database(Protocol):
    """A database storage can write to and read from, from the Trio thread.

    ``write(work)`` runs ``work(cursor)`` in a worker thread inside one write transaction and
    commits it; if ``work`` raises, the transaction is rolled back and the error re-raised.
    ``read(work)`` does the same in a read-only snapshot. Both raise
    :class:`DatabaseUnavailableError` when the database cannot be reached. Neither ever blocks
    the Trio thread. Cancellation waits for a running ``work`` to finish (a thread cannot be
    interrupted): keep each ``work`` short.
    """

    @property
    def description(self) -> str:
        """Where the database is, for log lines and messages (no secrets)."""
        ...

    async def write[T](self, work: Callable[[SqlCursor], T]) -> T: ...

    async def read[T](self, work: Callable[[SqlCursor], T]) -> T: ...

    async def aclose(self) -> None:
        """Close connections; a later ``write``/``read`` opens them again."""
        ...
