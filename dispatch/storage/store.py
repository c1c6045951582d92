"""The storage component as the daemon sees it: :func:`open_store` and :class:`Store`.

A :class:`Store` bundles one database with the things built on it: the
:class:`MessageLog` writer (a supervisor component, :meth:`Store.run`), the
:class:`LogQueries` read side, the :class:`ApiKeyStore` and the dashboard's
:class:`AdminStore`. The engine is chosen by
``database.url``; everything above the :class:`Database` protocol is the same for every
engine: :class:`~dispatch.storage.sqlite.SqliteDatabase` for ``sqlite:///...``,
:class:`~dispatch.storage.postgres.PostgresDatabase` for ``postgresql://...`` (several nodes
sharing one database, docs/scaling.md).

:meth:`Store.run` also keeps this node's heartbeat in the ``nodes`` table
(``nodes.py``) and, on PostgreSQL, listens for API key changes made by other nodes
(``notifications.py``); both are cancelled when the log writer has finished.
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
from dispatch.storage.nodes import Heartbeat, resolve_node_id
from dispatch.storage.notifications import KeyChangeListener, announce_key_change
from dispatch.storage.postgres import (
    POOL_SIZE,
    STATEMENT_TIMEOUT,
    PostgresDatabase,
    is_postgresql_url,
)
from dispatch.storage.purge import purge
from dispatch.storage.queries import LogQueries
from dispatch.storage.sqlite import SqliteDatabase
from dispatch.storage.suppression import SuppressionList


class Store:
    """The database, the log writer and the queries of one Dispatch process.

    Owns the database: :meth:`run` closes it when the writer has finished.
    """

    def __init__(self, database: Database, log: MessageLog) -> None:
        self.database = database
        self.log = log
        self.queries = LogQueries(database, node=log.node_id)  # this node's gauges
        shared = database if isinstance(database, PostgresDatabase) else None
        self.api_keys = ApiKeyStore(database, announce=announce_key_change if shared else None)
        self.admin = AdminStore(database)  # the dashboard's password and sessions
        self.suppressions = SuppressionList(database)  # addresses that bounced hard
        self.key_changes = KeyChangeListener(shared) if shared else None
        """API key changes made by any node (PostgreSQL only); ``subscribe`` to hear them."""
        self.heartbeat = Heartbeat(database, log.node_id) if log.node_id else None

    @classmethod
    def for_database(
        cls, database: Database, data_dir: str | os.PathLike[str], *, node_id: str | None = None
    ) -> Store:
        """A store on ``database``, journaling into ``data_dir``, writing ``node_id``."""
        journal = Path(data_dir).absolute() / JOURNAL_NAME
        return cls(database, MessageLog(database, journal, node_id=node_id))

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
            async with trio.open_nursery() as nursery:
                if self.heartbeat is not None:
                    nursery.start_soon(self.heartbeat.run)
                if self.key_changes is not None:
                    nursery.start_soon(self.key_changes.run)
                await self.log.run(shutdown, task_status=task_status)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.database.aclose()

    async def purge(
        self, older_than: Mapping[str, float], *, now: float | None = None
    ) -> dict[str, int]:
        """Delete old rows; see :func:`dispatch.storage.purge.purge`."""
        return await purge(self.database, older_than, now=now)


def open_store(
    url: str,
    data_dir: str | os.PathLike[str],
    *,
    node_id: str | None = None,
    pool_size: int = POOL_SIZE,
    statement_timeout: float = STATEMENT_TIMEOUT,
) -> Store:
    """The store for ``database.url`` with its journal in ``data_dir``. No database I/O.

    ``node_id``: ``database.node_id``; ``None`` writes rows without a node id (tools),
    ``""`` uses the id kept in ``data_dir/node-id``, generating it on first use (the only
    file this touches). ``pool_size`` and ``statement_timeout`` apply to PostgreSQL.

    Raises :class:`ValueError` with a message naming the key if it cannot be used, and
    :class:`OSError` if the node id file can be neither read nor written.
    """
    if url.startswith("sqlite:"):
        database: Database = SqliteDatabase.from_url(url)
    elif is_postgresql_url(url):
        database = PostgresDatabase(
            url,
            pool_size=pool_size,
            statement_timeout=statement_timeout,
        )
    else:
        scheme = url.partition(":")[0] or url
        raise ValueError(
            f"database.url: unknown database {scheme!r}; use sqlite:///path/to/dispatch.db "
            "or postgresql://user:password@host:5432/database"
        )
    if node_id is not None:
        node_id = resolve_node_id(node_id, data_dir)
        if isinstance(database, PostgresDatabase):
            database.application_name = f"dispatch {node_id}"
    return Store.for_database(database, data_dir, node_id=node_id)
