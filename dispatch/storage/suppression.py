"""The suppression list: addresses that bounced hard, not mailed again until an expiry.

A row of ``suppressions`` (schema migration "suppression list") holds one lower-cased
address, why it is suppressed (the upstream's permanent reply), the message whose delivery
bounced, and when the entry was made and expires. Delivery adds an entry after a hard bounce
(:meth:`SuppressionList.add`, an upsert that extends the expiry); intake or delivery asks
:meth:`SuppressionList.check` before mailing an address (``[suppression] mode``); the CLI lists
and removes entries (``dispatch suppression list|remove``). An expired row is ignored by every
read and removed by the next :meth:`SuppressionList.add`.

:meth:`check` runs on the intake path (one call per RCPT), so it answers from a copy of the
active entries kept in memory and re-read at most every :data:`REFRESH_SECONDS` (an entry
removed by the CLI, which writes the database directly, is honoured within that time). When
the database cannot be read, the copy in hand is used: a database outage never refuses mail.

The SQL is the portable subset of ``schema.py`` (``ON CONFLICT ... DO UPDATE``, ``DOUBLE
PRECISION`` times): the same statements run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, Final

import attrs
import trio

from dispatch.storage.database import Database, DatabaseUnavailableError, SqlCursor
from dispatch.storage.records import MAX_FREE_TEXT, storable

log = logging.getLogger("dispatch.suppression")

REFRESH_SECONDS: Final = 5.0

_COLUMNS: Final = "address, reason, message_id, created_at, expires_at"
_UPSERT: Final = (
    f"INSERT INTO suppressions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?) "  # noqa: S608 (constant)
    "ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, "
    "message_id = excluded.message_id, created_at = excluded.created_at, "
    "expires_at = excluded.expires_at"
)


def normalise(address: str) -> str:
    """The form addresses are stored and looked up in: lower-cased, as most mail systems
    treat the local part case-insensitively in practice (RFC 5321 §2.4 allows either)."""
    return storable(address.strip().lower())


@attrs.frozen(kw_only=True)
class Suppression:
    """One entry: ``address`` is not mailed until ``expires_at`` (Unix seconds)."""

    address: str
    reason: str
    message_id: str | None
    created_at: float
    expires_at: float

    def public(self) -> dict[str, Any]:
        """The entry as JSON-able fields (``dispatch suppression list --json``)."""
        return attrs.asdict(self)


def _entry(row: Sequence[Any]) -> Suppression:
    return Suppression(
        address=row[0],
        reason=row[1],
        message_id=row[2],
        created_at=float(row[3]),
        expires_at=float(row[4]),
    )


class SuppressionList:
    """The ``suppressions`` table and the in-memory copy :meth:`check` answers from.

    Owns no task: the copy is refreshed by the :meth:`check` that finds it stale, one at a
    time (a lock), while the others answer from the copy in hand.
    """

    unavailable_errors: ClassVar[tuple[type[Exception], ...]] = (
        DatabaseUnavailableError,
        sqlite3.Error,
    )
    """What :meth:`add`, :meth:`list` and :meth:`remove` raise when the database cannot answer."""

    def __init__(self, database: Database, *, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._database = database
        self._refresh_seconds = refresh_seconds
        self._active: dict[str, Suppression] = {}
        self._read_at = -float("inf")  # trio time of the last read; never: stale
        self._refreshing = trio.Lock()

    async def add(
        self,
        address: str,
        reason: str,
        *,
        days: float,
        message_id: str | None = None,
        now: float | None = None,
    ) -> Suppression:
        """Suppress ``address`` for ``days`` from now (an existing entry is replaced, so a
        new bounce extends it); expired rows are removed in the same transaction."""
        at = time.time() if now is None else now
        entry = Suppression(
            address=normalise(address),
            reason=storable(reason[:MAX_FREE_TEXT]),
            message_id=message_id,
            created_at=at,
            expires_at=at + days * 86400,
        )

        def work(cursor: SqlCursor) -> None:
            cursor.execute("DELETE FROM suppressions WHERE expires_at <= ?", (at,))
            cursor.execute(_UPSERT, attrs.astuple(entry))

        await self._database.write(work)
        self._active[entry.address] = entry
        return entry

    async def list(self, *, now: float | None = None) -> list[Suppression]:
        """The entries in force, newest first."""
        at = time.time() if now is None else now
        rows = await self._database.read(partial(_select_active, at=at))
        return [_entry(row) for row in rows]

    async def remove(self, address: str) -> bool:
        """Remove the entry of ``address``; whether there was one (expired or not)."""
        key = normalise(address)

        def work(cursor: SqlCursor) -> bool:
            cursor.execute("DELETE FROM suppressions WHERE address = ?", (key,))
            return bool(cursor.rowcount > 0)

        removed = await self._database.write(work)
        self._active.pop(key, None)
        return removed

    async def check(self, address: str, *, now: float | None = None) -> Suppression | None:
        """The entry in force for ``address``, or None (see the module docstring)."""
        await self._refresh_if_stale(now)
        entry = self._active.get(normalise(address))
        at = time.time() if now is None else now
        return entry if entry is not None and entry.expires_at > at else None

    async def snapshot(self, *, now: float | None = None) -> tuple[Suppression, ...]:
        """The entries in force, from the in-memory copy (re-read when stale), sorted by
        address: what the main process pushes to intake worker processes."""
        await self._refresh_if_stale(now)
        at = time.time() if now is None else now
        return tuple(sorted((e for e in self._active.values() if e.expires_at > at),
                            key=lambda e: e.address))  # fmt: skip

    async def _refresh_if_stale(self, now: float | None) -> None:
        if trio.current_time() - self._read_at < self._refresh_seconds:
            return
        if self._refreshing.locked():  # another task is re-reading: use the copy in hand
            return
        async with self._refreshing:
            try:
                entries = await self.list(now=now)
            except self.unavailable_errors as exc:
                log.warning("suppression list not re-read (%s); using the copy in hand", exc)
            else:
                self._active = {e.address: e for e in entries}
            self._read_at = trio.current_time()


def _select_active(cursor: SqlCursor, *, at: float) -> list[Any]:
    cursor.execute(
        f"SELECT {_COLUMNS} FROM suppressions WHERE expires_at > ? "  # noqa: S608 (constant)
        "ORDER BY created_at DESC",
        (at,),
    )
    return cursor.fetchall()
