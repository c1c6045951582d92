"""API key changes announced to every node sharing a PostgreSQL database (LISTEN/NOTIFY).

Every request reads its key's row, so a key revoked on one node is refused by the others on
their next request anyway (``dispatch/security/api_keys.py``). What a node cannot see without
being told is that a key it keeps in its cache was revoked elsewhere, and the cache is what it
falls back on when the database stops answering. So a key's creation or revocation sends
``NOTIFY dispatch_api_keys, '<prefix>'`` in the transaction that changes the row
(:func:`announce_key_change`; delivered at commit, not at all on rollback), and each node's
:class:`KeyChangeListener` hands the prefix to its subscribers, which drop the cached key.

The listener (started by :meth:`dispatch.storage.store.Store.run` on PostgreSQL only, stopped
by cancellation) keeps one connection of its own in a worker thread that waits for
notifications one second at a time. When the connection is lost it reconnects with back-off.
A change committed while it was away is not delivered to it; that is no hole in revocation
(every request still reads the key's row), only in the outage fallback, and only if the
database became unreachable for this node right after such a change. Forgetting every key
on reconnect instead would empty the fallback exactly when it is needed (a database restart
disconnects the listener too).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Final

import psycopg
import trio

from dispatch.storage.database import SqlCursor
from dispatch.storage.postgres import PostgresDatabase, notify

log = logging.getLogger("dispatch.storage")

CHANNEL: Final = "dispatch_api_keys"
WAIT_SECONDS: Final = 1.0
RETRY_FIRST: Final = 0.2
RETRY_MAX: Final = 5.0

KeyChanged = Callable[[str | None], None]
"""A subscriber: called with a key's prefix, or ``None`` for "any key may have changed"."""


def announce_key_change(cursor: SqlCursor, prefix: str) -> None:
    """In a PostgreSQL write: tell every node that the key ``prefix`` changed, at commit."""
    notify(cursor, CHANNEL, prefix)


class KeyChangeListener:
    """LISTENs on :data:`CHANNEL` and calls the subscribers. Owns its connection."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database
        self._subscribers: list[KeyChanged] = []
        self._connection: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # the connection is set by worker threads
        self._stopped = False
        self.listening = trio.Event()
        self.received = 0

    def subscribe(self, subscriber: KeyChanged) -> None:
        self._subscribers.append(subscriber)

    def _tell(self, prefix: str | None) -> None:
        for subscriber in self._subscribers:
            subscriber(prefix)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with back-off."""
        backoff = RETRY_FIRST
        self._stopped = False
        try:
            while True:
                try:
                    await trio.to_thread.run_sync(self._listen, abandon_on_cancel=True)
                    self.listening.set()
                    backoff = RETRY_FIRST
                    while True:
                        prefixes = await trio.to_thread.run_sync(self._wait, abandon_on_cancel=True)
                        for prefix in prefixes:
                            self.received += 1
                            self._tell(prefix)
                except psycopg.Error as exc:
                    log.debug("API key notifications: %s; listening again in %g s", exc, backoff)
                    self._close()
                    if self.listening.is_set():
                        self.listening = trio.Event()
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX)
        finally:
            with self._lock:
                self._stopped = True  # a thread still connecting closes what it opens
            self._close()

    def _listen(self) -> None:
        self._close()
        connection = self._database.connect()
        connection.execute(f"LISTEN {CHANNEL}")
        with self._lock:
            if not self._stopped:
                self._connection = connection
                return
        connection.close()

    def _wait(self) -> list[str]:
        connection = self._connection
        if connection is None:
            raise psycopg.OperationalError("not connected")
        found = [n.payload for n in connection.notifies(timeout=WAIT_SECONDS)]
        if connection.closed or connection.broken:
            raise psycopg.OperationalError("the listening connection was lost")
        if not found:
            # notifies() returns quietly on a dead server too: ask, so the loss is noticed.
            connection.execute("SELECT 1")
        return found

    def _close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(psycopg.Error):
                connection.close()
