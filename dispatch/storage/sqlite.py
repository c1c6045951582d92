"""The embedded database: one SQLite file in WAL mode, used only from worker threads (SPEC §7).

Theory of operation
-------------------
:class:`SqliteDatabase` owns ONE ``sqlite3`` connection, opened lazily with
``check_same_thread=False`` and guarded by a ``trio.CapacityLimiter(1)``: every write and
every read is a function of a cursor run by ``trio.to_thread.run_sync`` through that limiter,
so the connection is used by one thread at a time and the Trio thread never touches it.

Why one connection for reads and writes, not a second one for reads: a connection that
still has a deleted database file open deletes ``<db>-wal`` *by name* when it closes. With
two connections, the reader could close after the writer had already created a new
database, and delete the new database's WAL with the rows in it. One connection makes
"notice the file is gone, copy it back, reopen" a single step that nothing can interleave.
Reads are index lookups of a few milliseconds and WAL lets them run while another process
writes; what they may queue behind is a write batch of the log writer (milliseconds) or its
busy wait on a locked database (at most :data:`BUSY_TIMEOUT`).

Every hop starts by comparing the file at the path with the one the connection has open
(device and inode):

- *deleted* while open (``rm dispatch.db``, even ``rm -r .dispatch``): the open connection
  still reads the old file, so its content is copied back into place with SQLite's backup
  API, and the connection reopened on the copy. Deleting the database under a running
  Dispatch therefore loses no log row; to really reset it, stop Dispatch first.
- *replaced* by another file: the connection is reopened on the new file.
- *missing and never opened*: a new file is created (mode 0600, parent directories 0700)
  and the schema applied.

A write also compares after its commit. If the file was deleted during the transaction,
the rows are in the open connection and are copied back with the rest, so the write
succeeds. If it was replaced, the rows went into the old file, so the write is reported as
failed (the log writer journals and replays it; replays are idempotent).

Errors: "database is locked" (another process holds the write lock longer than
:data:`BUSY_TIMEOUT`), "readonly", "disk is full", "unable to open", I/O errors and schema
versions from a newer Dispatch become :class:`DatabaseUnavailableError`. After such an error
the transaction is rolled back and the connection closed, to be reopened by the next hop —
except after a lock error (the connection is fine) or when the file is gone (the connection
is the only way left to its rows). Integrity and programming errors, and exceptions raised by
``work`` itself, are bugs: rolled back and re-raised unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from dispatch.config.render import redact_url_credentials
from dispatch.storage.database import DatabaseUnavailableError, SqlCursor
from dispatch.storage.schema import (
    CREATE_VERSION_TABLE,
    MIGRATIONS,
    RECORD_VERSION,
    SELECT_APPLIED,
    SQLITE,
    Migration,
    SchemaTooNewError,
    check_known_version,
    check_order,
)

log = logging.getLogger("dispatch.storage")

URL_PREFIX: Final = "sqlite:///"
# Long enough to ride out another process's checkpoint or short transaction, short enough
# that a wedged lock is reported (and the log journaled) within about a second.
BUSY_TIMEOUT: Final = 1.0
DIRECTORY_MODE: Final = 0o700  # the log holds addresses and subjects: private to the daemon
FILE_MODE: Final = 0o600
_SIDE_FILES: Final = ("-wal", "-shm", "-journal")
# Busy and locked: another connection holds the lock; our connection itself is fine.
_LOCK_ERRORS: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def sqlite_path(url: str) -> Path:
    """The absolute database path of ``sqlite:///relative/path.db`` or ``sqlite:////abs.db``.

    A relative path is taken from the current directory (the SPEC default
    ``sqlite:///./.dispatch/dispatch.db`` sits beside the default ``data_dir``).
    """
    if not url.startswith(URL_PREFIX):
        raise ValueError(
            f"database.url {redact_url_credentials(repr(url))}: a SQLite URL looks like "
            "sqlite:///./relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    raw = url[len(URL_PREFIX) :]
    if not raw or "?" in raw or "#" in raw or raw == ":memory:":
        raise ValueError(
            f"database.url {redact_url_credentials(repr(url))}: give the path of a database "
            "file (no options, no :memory:)"
        )
    return Path(urllib.parse.unquote(raw)).absolute()


class SqliteDatabase:
    """The :class:`~dispatch.storage.database.Database` of one SQLite file.

    Owns its connection and limiter. Nothing is opened by the constructor: the first
    ``write``/``read`` opens the file (creating it and applying ``migrations`` if needed)
    and a failure there is a :class:`DatabaseUnavailableError` like any other.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
        migrations: tuple[Migration, ...] = MIGRATIONS,
    ) -> None:
        check_order(migrations)
        self.path: Final = path
        self._connection = _Connection(path, busy_timeout, migrations)
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = BUSY_TIMEOUT) -> SqliteDatabase:
        return cls(sqlite_path(url), busy_timeout=busy_timeout)

    @property
    def description(self) -> str:
        return f"{URL_PREFIX}{self.path}"

    async def write[T](self, work: Callable[[SqlCursor], T]) -> T:
        return await trio.to_thread.run_sync(self._connection.write, work, limiter=self._limiter)

    async def read[T](self, work: Callable[[SqlCursor], T]) -> T:
        return await trio.to_thread.run_sync(self._connection.read, work, limiter=self._limiter)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._connection.close, limiter=self._limiter)


class _FileMovedError(Exception):
    pass


class _Connection:
    """The connection and everything that touches it; confined to one thread at a time."""

    def __init__(self, path: Path, busy_timeout: float, migrations: tuple[Migration, ...]):
        self._path = path
        self._busy_timeout = busy_timeout
        self._migrations = migrations
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file

    def write[T](self, work: Callable[[SqlCursor], T]) -> T:
        return self._run(work, write=True)

    def read[T](self, work: Callable[[SqlCursor], T]) -> T:
        return self._run(work, write=False)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None
        self._identity = None

    def _run[T](self, work: Callable[[SqlCursor], T], *, write: bool) -> T:
        try:
            conn = self._current()
            cursor = conn.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = work(cursor)
                cursor.execute("COMMIT" if write else "ROLLBACK")
            finally:
                cursor.close()
            if write:
                self._check_file_after_write(conn)
        except (sqlite3.Error, OSError, SchemaTooNewError, _FileMovedError) as exc:
            self._after_error(exc)
            if isinstance(exc, sqlite3.Error) and type(exc) not in (
                sqlite3.OperationalError,
                sqlite3.DatabaseError,  # exactly: "file is not a database", "malformed"
            ):
                raise
            raise DatabaseUnavailableError(_describe(exc, self._path)) from exc
        except BaseException:  # a bug in ``work``: leave the connection ready for the next
            self._rollback()
            raise
        return result

    def _check_file_after_write(self, conn: sqlite3.Connection) -> None:
        """Make sure the rows just committed are in the file at the path.

        Deleted during the write: the rows are in the open connection, which is copied back
        into place now. Replaced by another file: they are not in it, and the write fails
        (the caller journals the rows and writes them again, idempotently, later).
        """
        found = _identity(self._path)
        if found is None:
            self._restore_deleted_file(conn)
        elif found != self._identity:
            raise _FileMovedError("the database file was replaced during a write")

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _after_error(self, exc: BaseException) -> None:
        """Roll back; keep the connection only on a lock error or when its file is gone."""
        self._rollback()
        if self._conn is None or _is_lock_error(exc):
            return
        try:
            if _identity(self._path) is None:
                return  # the open connection is the only way left to the deleted file's rows
        except OSError:
            pass
        self.close()

    def _current(self) -> sqlite3.Connection:
        """The open connection to the file now at the path (restoring or reopening it)."""
        found = _identity(self._path)
        if self._conn is not None:
            if found == self._identity:
                return self._conn
            if found is None:
                self._restore_deleted_file(self._conn)
            else:
                log.warning("database file %s was replaced: reopening it", self._path)
                self.close()
        return self._open()

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        if not self._path.exists():
            # A WAL without its database is a leftover that must not be applied to a new file.
            _remove_side_files(self._path)
            os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
        uri = f"file:{urllib.parse.quote(str(self._path))}?mode=rw"
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=self._busy_timeout,
            isolation_level=None,  # transactions are explicit: BEGIN ... COMMIT
            check_same_thread=False,  # used from many worker threads, one at a time
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode is {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; WAL-safe
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._identity = _identity(self._path)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply the migrations that are missing, each in one transaction (see schema.py)."""
        wanted = {m.version for m in self._migrations}
        try:
            applied = {row[0] for row in conn.execute(SELECT_APPLIED)}
        except sqlite3.OperationalError:  # no schema_version table: a new database
            applied = set()
        check_known_version(applied, self._migrations)
        if wanted <= applied:
            return  # the usual case, answered without taking the write lock
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(CREATE_VERSION_TABLE)
        conn.execute("COMMIT")
        for migration in self._migrations:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read again under the write lock: another process may have just applied it.
                applied = {row[0] for row in conn.execute(SELECT_APPLIED)}
                check_known_version(applied, self._migrations)
                if migration.version not in applied:
                    for statement in migration.render(SQLITE):
                        conn.execute(statement)
                    conn.execute(
                        RECORD_VERSION, (migration.version, migration.description, time.time())
                    )
                    log.info(
                        "database %s: applied migration %d (%s)",
                        self._path,
                        migration.version,
                        migration.description,
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _restore_deleted_file(self, conn: sqlite3.Connection) -> None:
        """Copy the deleted-but-open database back into place, then drop the old handle."""
        path = self._path
        temporary = path.with_name(path.name + ".restoring")
        path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        temporary.unlink(missing_ok=True)
        _remove_side_files(temporary)
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
        try:
            target = sqlite3.connect(temporary, isolation_level=None)
            try:
                conn.backup(target)
            finally:
                target.close()
            _fsync_file(temporary)
            # Closing the last handle checkpoints into the deleted file and removes the
            # old -wal and -shm by name: done before the copy takes the name.
            self.close()
            _remove_side_files(path)
            os.rename(temporary, path)
            _fsync_file(path.parent)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        log.warning(
            "database file %s was deleted while in use: restored it from the open connection",
            path,
        )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (stat.st_dev, stat.st_ino)


def _remove_side_files(path: Path) -> None:
    for suffix in _SIDE_FILES:
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: BaseException, path: Path) -> str:
    if isinstance(exc, OSError):
        detail = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        return f"database {path}: {detail}"
    return f"database {path}: {exc}{_hint(path)}"


def _hint(path: Path) -> str:
    """Why SQLite may have said "unable to open" or "readonly", which it does not say."""
    directory = path.parent
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f" (the file system of {directory} is read-only)"
    except OSError:
        return ""
    if not os.access(directory, os.W_OK):
        return f" (the directory {directory} is not writable)"
    return ""


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode in _LOCK_ERRORS
