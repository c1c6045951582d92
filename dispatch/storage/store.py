"""The storage component as the daemon sees it: :func:`open_store` and :class:`Store`.

A :class:`Store` bundles one database with the things built on it: the
:class:`MessageLog` writer (a supervisor component, :meth:`Store.run`), the
:class:`LogQueries` read side, the :class:`ApiKeyStore` and the dashboard's
:class:`AdminStore`. The engine is chosen by
``database.url``; everything above the :class:`Database` protocol is the same for every
engine, which is where a PostgreSQL backend slots in (:meth:`Store.for_database`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import trio

from dispatch.storage.admin import AdminStore
from dispatch.storage.api_keys import ApiKeyStore
from dispatch.storage.database import Database
from dispatch.storage.journal import JOURNAL_NAME
from dispatch.storage.log_writer import MessageLog, StopRequest
from dispatch.storage.purge import purge
from dispatch.storage.queries import LogQueries
from dispatch.storage.sqlite import SqliteDatabase


class Store:
    """The database, the log writer and the queries of one Dispatch process.

    Owns the database: :meth:`run` closes it when the writer has finished.
    """

    def __init__(self, database: Database, log: MessageLog) -> None:
        self.database = database
        self.log = log
        self.queries = LogQueries(database)
        self.api_keys = ApiKeyStore(database)
        self.admin = AdminStore(database)  # the dashboard's password and sessions

    @classmethod
    def for_database(cls, database: Database, data_dir: str | os.PathLike[str]) -> Store:
        """A store on ``database``, journaling into ``data_dir``."""
        return cls(database, MessageLog(database, Path(data_dir).absolute() / JOURNAL_NAME))

    async def run(
        self,
        shutdown: StopRequest,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The storage component: runs the log writer, then closes the database.

        Ready at once (it never waits for the database); stops as :meth:`MessageLog.run`.
        """
        try:
            await self.log.run(shutdown, task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self.database.aclose()

    async def purge(
        self, older_than: Mapping[str, float], *, now: float | None = None
    ) -> dict[str, int]:
        """Delete old rows; see :func:`dispatch.storage.purge.purge`."""
        return await purge(self.database, older_than, now=now)


def open_store(url: str, data_dir: str | os.PathLike[str]) -> Store:
    """The store for ``database.url`` with its journal in ``data_dir``. Does no I/O.

    Raises :class:`ValueError` with a message naming the URL if it cannot be used.
    """
    if url.startswith("sqlite:"):
        return Store.for_database(SqliteDatabase.from_url(url), data_dir)
    if url.startswith(("postgresql:", "postgres:")):
        raise ValueError(
            "database.url: PostgreSQL is not supported by this version yet; "
            "use sqlite:///path/to/dispatch.db"
        )
    scheme = url.partition(":")[0] or url
    raise ValueError(
        f"database.url: unknown database {scheme!r}; use sqlite:///path/to/dispatch.db"
    )
