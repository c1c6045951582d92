"""The shared database of several nodes: PostgreSQL through psycopg 3 in worker threads (SPEC §7).

Theory of operation
-------------------
:class:`PostgresDatabase` is the :class:`~dispatch.storage.database.Database` of one
PostgreSQL database. Storage hands every engine the same thing, a synchronous function of a
DB-API cursor (``schema.py`` keeps the SQL portable), so this backend runs that function in a
worker thread on a psycopg connection, exactly as the SQLite backend does: the queries, the
log writer and the purge are the same code on both engines. (psycopg 3 in threads rather than
asyncpg under trio-asyncio: asyncpg would need every query module written twice, async and
cursor-shaped, and measured no faster here for the log's statements: ``bench/pg_drivers.py``,
docs/scaling.md "Figures".)

- **Pool.** At most ``pool_size`` connections, each used by one thread at a time (a
  ``trio.CapacityLimiter``); idle ones are kept for the next hop, broken ones dropped. A
  connection is opened on demand with ``connect_timeout``, TCP keep-alives and the
  server-side ``statement_timeout`` / ``lock_timeout``, in autocommit mode: each hop runs
  ``BEGIN`` ... ``COMMIT`` (reads ``BEGIN READ ONLY`` ... ``ROLLBACK``) itself.
- **Placeholders.** Storage writes ``?``; the cursor handed to ``work`` rewrites them to
  psycopg's ``%s`` (and a literal ``%`` to ``%%``). No storage SQL has ``?`` in a literal.
- **Deadline of a hop.** A server that stops answering (its process stopped, a network
  partition) would hold a thread forever: ``statement_timeout`` is enforced by the server
  itself. So every hop also has a client deadline (``statement_timeout`` plus a second) and
  is abandoned when it passes or when the caller is cancelled: the hop's socket is shut down,
  which wakes the thread with an error, rolls its transaction back (the server sees the
  connection close) and drops the connection. The caller gets
  :class:`DatabaseUnavailableError` (or its cancellation). A write abandoned while its
  ``COMMIT`` was in flight may or may not have landed; the log writer journals and replays
  it, and replays are idempotent (``event_id``).
- **Reconnect with back-off.** After a failed connect, new connections are not tried again
  for :data:`CONNECT_RETRY_FIRST` seconds, doubling up to :data:`CONNECT_RETRY_MAX`; hops in
  between fail at once with the last error. The first connect that succeeds resets it.
- **Migrations.** The first connection of a process applies the missing migrations
  (``schema.py``) under ``pg_advisory_lock`` (:data:`MIGRATION_LOCK`), so nodes starting
  together apply each migration once; each migration and its ``schema_version`` row are one
  transaction (DDL is transactional in PostgreSQL).
- **Notifications.** A write may call :func:`notify` (``NOTIFY`` is delivered at commit);
  ``dispatch/storage/notifications.py`` listens for them on a connection of its own.

Errors: connection failures, server shutdown, timeouts, lock timeouts, a read-only or full
server and schema versions from a newer Dispatch become :class:`DatabaseUnavailableError`;
integrity and programming errors, and exceptions raised by ``work`` itself, are bugs: rolled
back and re-raised unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import psycopg
import psycopg.errors
import trio

from dispatch.config.render import redact_url_credentials
from dispatch.storage.database import DatabaseUnavailableError, SqlCursor
from dispatch.storage.schema import (
    CREATE_VERSION_TABLE,
    MIGRATIONS,
    POSTGRESQL,
    RECORD_VERSION,
    SELECT_APPLIED,
    Migration,
    SchemaTooNewError,
    check_known_version,
    check_order,
)

log = logging.getLogger("dispatch.storage")

URL_PREFIXES: Final = ("postgresql://", "postgres://")
POOL_SIZE: Final = 4
STATEMENT_TIMEOUT: Final = 5.0
CONNECT_TIMEOUT: Final = 5  # seconds; libpq takes whole seconds (at least 2)
HOP_MARGIN: Final = 1.0  # the client deadline of a hop: statement_timeout plus this
CONNECT_RETRY_FIRST: Final = 0.1
CONNECT_RETRY_MAX: Final = 2.0
# pg_advisory_lock key of schema migrations: any fixed 64-bit number ("DSPMIGR1" in ASCII).
MIGRATION_LOCK: Final = 0x4453504D49475231
# Errors that say "the server cannot do this now", not "this SQL is wrong".
_UNAVAILABLE: Final = (
    psycopg.OperationalError,  # connection lost or refused, timeouts, lock timeouts, shutdown
    psycopg.errors.InsufficientResources,  # disk full, too many connections
    psycopg.errors.ReadOnlySqlTransaction,  # a standby, or default_transaction_read_only
    psycopg.errors.CannotConnectNow,
    psycopg.InterfaceError,  # the connection was closed under the hop (abandoned)
)


def is_postgresql_url(url: str) -> bool:
    return url.startswith(URL_PREFIXES)


@functools.lru_cache(maxsize=512)
def to_psycopg(sql: str) -> str:
    """``sql`` with ``?`` placeholders in psycopg's ``%s`` style (``%`` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Cursor:
    """A psycopg cursor speaking storage's ``?`` placeholders (see :class:`SqlCursor`)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> object:
        return self._cursor.execute(to_psycopg(sql), tuple(parameters))

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> object:
        rows = [tuple(p) for p in seq_of_parameters]
        if rows:  # psycopg refuses an empty batch's missing parameters
            self._cursor.executemany(to_psycopg(sql), rows)
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


def notify(cursor: SqlCursor, channel: str, payload: str) -> None:
    """Queue a notification, sent to every listener when the hop's transaction commits.

    Only for a cursor of this backend (``pg_notify`` does not exist in SQLite).
    """
    cursor.execute("SELECT pg_notify(?, ?)", (channel, payload))


class _Hop:
    """One thread's use of a connection; :meth:`abandon` unsticks it from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connection: psycopg.Connection[Any] | None = None
        self.abandoned = False

    def attach(self, connection: psycopg.Connection[Any]) -> None:
        with self._lock:
            self.connection = connection
            abandoned = self.abandoned
        if abandoned:
            _shut_down(connection)

    def detach(self) -> bool:
        """Done with the connection: whether it may go back to the pool (not abandoned)."""
        with self._lock:
            self.connection = None
            return not self.abandoned

    def abandon(self) -> None:
        with self._lock:
            self.abandoned = True
            connection = self.connection
        if connection is not None:
            _shut_down(connection)


def _shut_down(connection: psycopg.Connection[Any]) -> None:
    """Make every blocked read or write on the connection's socket fail at once.

    ``shutdown`` (not ``close``) acts on the socket itself, so the thread blocked on it wakes
    with an error and the file descriptor stays valid until psycopg closes it.
    """
    try:
        fd = connection.pgconn.socket
        sock = socket.socket(fileno=fd)
    except (psycopg.Error, OSError):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


class PostgresDatabase:
    """The :class:`~dispatch.storage.database.Database` of one PostgreSQL database.

    Owns its pool of connections. The constructor does no I/O: the first ``write``/``read``
    connects (applying ``migrations`` if needed), and a failure there is a
    :class:`DatabaseUnavailableError` like any other.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = POOL_SIZE,
        statement_timeout: float = STATEMENT_TIMEOUT,
        application_name: str = "dispatch",
        migrations: tuple[Migration, ...] = MIGRATIONS,
    ) -> None:
        if not is_postgresql_url(url):
            raise ValueError(
                f"database.url {redact_url_credentials(repr(url))}: a PostgreSQL URL looks "
                "like postgresql://user:password@host:5432/database"
            )
        if pool_size < 1:
            raise ValueError("database.pool_size: give at least 1")
        check_order(migrations)
        self.url: Final = url
        self.statement_timeout: Final = statement_timeout
        self.application_name = application_name
        self._migrations = migrations
        self._limiter = trio.CapacityLimiter(pool_size)
        self._lock = threading.Lock()  # guards the fields below (used from worker threads)
        self._idle: list[psycopg.Connection[Any]] = []
        self._migrated = False
        self._generation = 0
        self._retry_at = 0.0
        self._backoff = CONNECT_RETRY_FIRST
        self._connect_error: str | None = None

    @property
    def description(self) -> str:
        return redact_url_credentials(self.url)

    @property
    def hop_timeout(self) -> float:
        return self.statement_timeout + HOP_MARGIN

    async def write[T](self, work: Callable[[SqlCursor], T]) -> T:
        return await self._hop(work, write=True)

    async def read[T](self, work: Callable[[SqlCursor], T]) -> T:
        return await self._hop(work, write=False)

    async def aclose(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1  # connections in use are closed when their hop ends
        for connection in idle:
            await trio.to_thread.run_sync(connection.close)

    # -- connections -----------------------------------------------------------------------

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A new connection with this database's timeouts (blocking; any thread)."""
        timeout_ms = max(1, round(self.statement_timeout * 1000))
        return psycopg.connect(
            self.url,
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=self.application_name,
            options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )

    async def _hop[T](self, work: Callable[[SqlCursor], T], *, write: bool) -> T:
        hop = _Hop()
        async with self._limiter:
            try:
                with trio.fail_after(self.hop_timeout):
                    return await trio.to_thread.run_sync(
                        functools.partial(self._run, work, write, hop), abandon_on_cancel=True
                    )
            except trio.TooSlowError:
                hop.abandon()
                raise DatabaseUnavailableError(
                    f"database {self.description}: no answer within {self.hop_timeout:g} s"
                ) from None
            except BaseException:
                hop.abandon()  # cancelled: the thread must not go on holding a connection
                raise

    def _begin(self, hop: _Hop, write: bool) -> psycopg.Connection[Any]:
        """A connection with the hop's transaction begun.

        A pooled connection may have died while idle (the server restarted, a proxy closed
        it): if its ``BEGIN`` fails, nothing ran yet, so one fresh connection is tried.
        """
        for reused in (True, False):
            try:
                connection = self._checkout(fresh=not reused)
            except (psycopg.Error, SchemaTooNewError) as exc:
                raise DatabaseUnavailableError(self._describe(exc)) from exc
            hop.attach(connection)
            try:
                connection.execute("BEGIN" if write else "BEGIN READ ONLY")
            except _UNAVAILABLE as exc:
                self._discard(connection)
                if not reused or hop.abandoned:
                    raise DatabaseUnavailableError(self._describe(exc)) from exc
                continue
            return connection
        raise AssertionError("unreachable")

    def _run[T](self, work: Callable[[SqlCursor], T], write: bool, hop: _Hop) -> T:
        generation = self._generation
        connection = self._begin(hop, write)
        try:
            with connection.cursor() as cursor:
                result = work(_Cursor(cursor))
                cursor.execute("COMMIT" if write else "ROLLBACK")
        except _UNAVAILABLE as exc:
            self._discard(connection)
            raise DatabaseUnavailableError(self._describe(exc)) from exc
        except BaseException:  # a bug in ``work`` or its SQL: roll back, keep the connection
            if hop.detach():
                self._rollback_or_discard(connection, generation)
            else:
                self._discard(connection)
            raise
        if hop.detach():
            self._checkin(connection, generation)
        else:
            self._discard(connection)
        return result

    def _checkout(self, *, fresh: bool = False) -> psycopg.Connection[Any]:
        with self._lock:
            while self._idle and not fresh:
                connection = self._idle.pop()
                if not connection.closed and not connection.broken:
                    return connection
                self._discard(connection)
            now = time.monotonic()
            if now < self._retry_at:
                raise psycopg.OperationalError(
                    f"{self._connect_error} (connecting again in {self._retry_at - now:.1f} s)"
                )
        try:
            connection = self.connect()
        except BaseException as exc:
            self._connect_failed(exc)
            raise
        try:
            self._migrate_once(connection)
        except BaseException as exc:
            self._connect_failed(exc)
            connection.close()
            raise
        with self._lock:
            self._retry_at = 0.0
            self._backoff = CONNECT_RETRY_FIRST
            self._connect_error = None
        return connection

    def _connect_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._connect_error = " ".join(str(exc).split()) or type(exc).__name__
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, CONNECT_RETRY_MAX)

    def _checkin(self, connection: psycopg.Connection[Any], generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._idle.append(connection)
                return
        self._discard(connection)  # taken out before aclose(): closed like the idle ones

    def _discard(self, connection: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(psycopg.Error):
            connection.close()

    def _rollback_or_discard(self, connection: psycopg.Connection[Any], generation: int) -> None:
        try:
            connection.execute("ROLLBACK")
        except psycopg.Error:
            self._discard(connection)
            return
        self._checkin(connection, generation)

    def _migrate_once(self, connection: psycopg.Connection[Any]) -> None:
        with self._lock:
            if self._migrated:
                return
        migrate(connection, self._migrations, self.description)
        with self._lock:
            self._migrated = True

    def _describe(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
            text += f" (database.statement_timeout_seconds = {self.statement_timeout:g})"
        return f"database {self.description}: {text}"


def probe(url: str, timeout: float) -> None:
    """``/health``'s check (blocking, for a worker thread): on a connection of its own, take
    and release the lock a log write takes on ``message_log``; :class:`ConnectionError`
    (an ``OSError``) naming the database if that fails.

    Waits at most ``timeout`` seconds for anything: a session holding a conflicting lock
    (``lock_timeout``), a server that stopped answering (a timer shuts the socket, as for an
    abandoned hop), so the thread never outlives the probe by long.
    """
    description = redact_url_credentials(url)
    timeout_ms = max(1, round(timeout * 1000))
    timer: threading.Timer | None = None
    try:
        connection = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(2, math.ceil(timeout)),
            application_name="dispatch health",
            options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        )
        try:
            timer = threading.Timer(timeout, _shut_down, (connection,))
            timer.daemon = True
            timer.start()
            with connection.transaction(force_rollback=True):
                connection.execute("LOCK TABLE message_log IN ROW EXCLUSIVE MODE")
        finally:
            if timer is not None:
                timer.cancel()
            connection.close()
    except psycopg.Error as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ConnectionError(f"database {description}: {text}") from exc


def migrate(
    connection: psycopg.Connection[Any], migrations: tuple[Migration, ...], description: str
) -> None:
    """Apply the migrations missing from the database (autocommit connection; blocking).

    Under ``pg_advisory_lock(MIGRATION_LOCK)``: a second node starting at the same time waits
    for the first, then finds every migration applied.
    """
    wanted = {m.version for m in migrations}
    applied = _applied(connection)
    check_known_version(applied, migrations)
    if wanted <= applied:
        return  # the usual case: no lock taken
    connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        connection.execute(CREATE_VERSION_TABLE)
        for migration in migrations:
            with connection.transaction():
                applied = _applied(connection)
                check_known_version(applied, migrations)
                if migration.version in applied:
                    continue
                for statement in migration.render(POSTGRESQL):
                    connection.execute(statement.replace("%", "%%"), ())
                connection.execute(
                    to_psycopg(RECORD_VERSION),
                    (migration.version, migration.description, time.time()),
                )
            log.info(
                "database %s: applied migration %d (%s)",
                description,
                migration.version,
                migration.description,
            )
    finally:
        if not connection.broken:
            connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _applied(connection: psycopg.Connection[Any]) -> set[int]:
    row = connection.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return set()
    return {int(r[0]) for r in connection.execute(SELECT_APPLIED)}
