"""The dashboard's admin password and login sessions (SPEC §7, §8): :class:`AdminStore`.

Two tables of the first migration (``schema.py``):

- ``admin``: at most one row (``id = 1``), the admin password's hash (argon2id, made by
  ``dispatch/security/passwords.py``) and when it was set. No row: the dashboard has not been
  set up yet and every page leads to the setup page.
- ``sessions``: one row per signed-in browser. ``token_hash`` is the hash of the session
  cookie's random token (never the token itself: a copy of the database signs nobody in);
  ``expires_at`` moves forward while the session is used (idle expiry) but never past the
  absolute limit the caller computes from ``created_at``; ``csrf_token`` is the session's
  token for state-changing forms.

To storage, the hashes and tokens are opaque strings: how a token is made and hashed is the
dashboard's. Every method is one ``Database`` call (a worker thread) and raises one of
:attr:`AdminStore.unavailable_errors` when the database cannot be used.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, ClassVar

import attrs

from dispatch.storage.database import Database, DatabaseUnavailableError, SqlCursor


@attrs.frozen
class SessionRow:
    """One row of ``sessions``. Times are Unix seconds."""

    token_hash: str = attrs.field(repr=False)
    created_at: float
    expires_at: float
    csrf_token: str = attrs.field(repr=False)


class AdminStore:
    """The ``admin`` and ``sessions`` tables. Owns nothing but a reference to ``database``.

    Writes no audit entries: the dashboard and the CLI write theirs.
    """

    unavailable_errors: ClassVar[tuple[type[Exception], ...]] = (
        DatabaseUnavailableError,
        sqlite3.Error,
    )

    def __init__(self, database: Database) -> None:
        self._database = database

    async def password_hash(self) -> str | None:
        """The admin password's hash; ``None`` while none has been set (first run)."""

        def work(cursor: SqlCursor) -> Any:
            cursor.execute("SELECT password_hash FROM admin WHERE id = 1")
            return cursor.fetchone()

        row = await self._database.read(work)
        return None if row is None else str(row[0])

    async def set_password_hash(
        self, password_hash: str, *, only_if_unset: bool = False, now: float | None = None
    ) -> bool:
        """Store the admin password's hash and end every session (a changed password signs
        every browser out). With ``only_if_unset``, only when none is set yet (the first-run
        page: two browsers racing to set it cannot both win). Whether it was stored."""
        at = time.time() if now is None else now

        def work(cursor: SqlCursor) -> bool:
            if only_if_unset:
                cursor.execute(
                    "INSERT INTO admin (id, password_hash, updated_at) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    (password_hash, at),
                )
            else:
                cursor.execute(
                    "INSERT INTO admin (id, password_hash, updated_at) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET password_hash = excluded.password_hash, "
                    "updated_at = excluded.updated_at",
                    (password_hash, at),
                )
            stored = cursor.rowcount > 0
            if stored:
                cursor.execute("DELETE FROM sessions")
            return stored

        return await self._database.write(work)

    async def create_session(self, row: SessionRow) -> None:
        """Store a new session; expired sessions are removed in the same transaction."""

        def work(cursor: SqlCursor) -> None:
            cursor.execute("DELETE FROM sessions WHERE expires_at <= ?", (row.created_at,))
            cursor.execute(
                "INSERT INTO sessions (token_hash, created_at, expires_at, csrf_token) "
                "VALUES (?, ?, ?, ?)",
                (row.token_hash, row.created_at, row.expires_at, row.csrf_token),
            )

        await self._database.write(work)

    async def find_session(self, token_hash: str, *, now: float | None = None) -> SessionRow | None:
        """The unexpired session with this token hash, or ``None``."""
        at = time.time() if now is None else now

        def work(cursor: SqlCursor) -> Any:
            cursor.execute(
                "SELECT token_hash, created_at, expires_at, csrf_token FROM sessions "
                "WHERE token_hash = ? AND expires_at > ?",
                (token_hash, at),
            )
            return cursor.fetchone()

        row = await self._database.read(work)
        if row is None:
            return None
        return SessionRow(
            token_hash=row[0], created_at=row[1], expires_at=row[2], csrf_token=row[3]
        )

    async def extend_session(self, token_hash: str, expires_at: float) -> None:
        """Move a session's expiry to ``expires_at`` (never backwards)."""

        def work(cursor: SqlCursor) -> None:
            cursor.execute(
                "UPDATE sessions SET expires_at = ? WHERE token_hash = ? AND expires_at < ?",
                (expires_at, token_hash, expires_at),
            )

        await self._database.write(work)

    async def end_session(self, token_hash: str) -> bool:
        """Remove one session (logout); whether it existed."""

        def work(cursor: SqlCursor) -> bool:
            cursor.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
            return cursor.rowcount > 0

        return await self._database.write(work)

    async def count_sessions(self, *, now: float | None = None) -> int:
        """Unexpired sessions."""
        at = time.time() if now is None else now

        def work(cursor: SqlCursor) -> int:
            cursor.execute("SELECT COUNT(*) FROM sessions WHERE expires_at > ?", (at,))
            return int(cursor.fetchone()[0])

        return await self._database.read(work)
