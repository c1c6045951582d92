"""API keys in the database (SPEC §4 "Keys", §7): the ``api_keys`` table, :class:`ApiKeyStore`.

A row holds a key's name, its lookup prefix, the hash of the whole key and its times. To
storage the prefix and the hash are opaque strings: what a key looks like, how it is hashed
and how a presented key is checked is security's (``dispatch/security/key_format.py``), and
keys are made, checked and revoked through :class:`dispatch.security.api_keys.ApiKeyVerifier`,
which reaches this table through its ``KeyRows`` protocol (this class is one). Storage and
security import nothing of each other.

Every method is one ``Database`` call (a worker thread) and raises one of
:attr:`ApiKeyStore.unavailable_errors` when the database cannot be used. The SQL is the
portable subset described in ``schema.py``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, Final

import attrs

from dispatch.storage.database import Database, DatabaseUnavailableError, SqlCursor

MAX_NAME_LENGTH: Final = 100


class UnknownApiKeyError(KeyError):
    """No API key has the id or prefix given."""

    def __init__(self, reference: object) -> None:
        super().__init__(reference)
        self.reference = reference

    def __str__(self) -> str:  # KeyError's own would print the repr of the argument only
        return (
            f"no API key with id or prefix {self.reference!r} "
            "(ids are numbers; see `dispatch api-key list` for each key's id and prefix)"
        )


def _name(value: str) -> str:
    name = value.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise ValueError(
            f"API key name {value!r}: give 1 to {MAX_NAME_LENGTH} printable characters "
            "(what the key is for, e.g. 'billing app')"
        )
    return name


@attrs.frozen(kw_only=True)
class ApiKeyRecord:
    """One row of ``api_keys``. Times are Unix seconds; ``None`` means never.

    ``key_hash`` is loaded only by :meth:`ApiKeyStore.find_by_prefix`, which the verifier
    needs; listings leave it ``None`` so that nothing built from a listing (a page, a JSON
    answer) can carry it. It is never part of the repr.
    """

    id: int
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None
    key_hash: str | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """The fields an operator may see (for JSON answers): everything but the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
        }


_COLUMNS: Final = "id, name, prefix, created_at, revoked_at, last_used_at"
_SELECT: Final = f"SELECT {_COLUMNS} FROM api_keys"  # noqa: S608 (constants only)
_SELECT_WITH_HASH: Final = f"SELECT {_COLUMNS}, hash FROM api_keys"  # noqa: S608
_INSERT: Final = (
    "INSERT INTO api_keys (name, prefix, hash, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (prefix) DO NOTHING RETURNING id"
)


def _record(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=int(row[0]),
        name=row[1],
        prefix=row[2],
        created_at=row[3],
        revoked_at=row[4],
        last_used_at=row[5],
        key_hash=row[6] if len(row) > 6 else None,
    )


class ApiKeyStore:
    """The ``api_keys`` table. Owns nothing but a reference to ``database``; cheap to keep.

    Writes no audit entries: the verifier's ``create`` and ``revoke`` do, and are what the
    CLI calls.
    """

    unavailable_errors: ClassVar[tuple[type[Exception], ...]] = (
        DatabaseUnavailableError,
        sqlite3.Error,
    )
    """What every method raises when the database cannot answer now (try again later)."""

    def __init__(
        self, database: Database, *, announce: Callable[[SqlCursor, str], None] | None = None
    ) -> None:
        """``announce(cursor, prefix)``: called inside the transaction that creates or revokes
        a key (PostgreSQL: a NOTIFY to the other nodes, see ``notifications.py``)."""
        self._database = database
        self._announce = announce

    async def insert(
        self, name: str, prefix: str, key_hash: str, *, now: float | None = None
    ) -> ApiKeyRecord | None:
        """Store a new key's row; its record, or ``None`` when ``prefix`` is already taken.

        Raises :class:`ValueError` for an empty or unprintable name.
        """
        name = _name(name)
        created_at = time.time() if now is None else now
        row = (name, prefix, key_hash, created_at)
        key_id = await self._database.write(
            partial(_insert_unless_taken, row=row, announce=self._announce)
        )
        if key_id is None:
            return None
        return ApiKeyRecord(id=key_id, name=name, prefix=prefix, created_at=created_at)

    async def list(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first. No hashes (see ApiKeyRecord)."""

        def work(cursor: SqlCursor) -> list[Any]:
            cursor.execute(f"{_SELECT} ORDER BY id")
            return cursor.fetchall()

        return [_record(row) for row in await self._database.read(work)]

    async def find_by_prefix(self, prefix: str) -> ApiKeyRecord | None:
        """The key with this lookup prefix, hash included, or ``None`` (UNIQUE index)."""

        def work(cursor: SqlCursor) -> Any:
            cursor.execute(f"{_SELECT_WITH_HASH} WHERE prefix = ?", (prefix,))
            return cursor.fetchone()

        row = await self._database.read(work)
        return None if row is None else _record(row)

    async def revoke(self, id_or_prefix: int | str, *, now: float | None = None) -> ApiKeyRecord:
        """Revoke a key by id (a number, or its digits) or by prefix; return its record.

        Idempotent: revoking a revoked key changes nothing and returns it with its first
        ``revoked_at``. Raises :class:`UnknownApiKeyError` when no key matches. A full key
        is no reference here: the verifier turns one into its prefix first.
        """
        record, _ = await self.revoke_reporting(id_or_prefix, now=now)
        return record

    async def revoke_reporting(
        self, id_or_prefix: int | str, *, now: float | None = None
    ) -> tuple[ApiKeyRecord, bool]:
        """:meth:`revoke`, also saying whether this call revoked it (False: it already was)."""
        column, value = _reference(id_or_prefix)
        revoked_at = time.time() if now is None else now

        def work(cursor: SqlCursor) -> tuple[Any, bool]:
            cursor.execute(
                f"UPDATE api_keys SET revoked_at = ? "  # noqa: S608 (column is a constant)
                f"WHERE {column} = ? AND revoked_at IS NULL",
                (revoked_at, value),
            )
            changed = cursor.rowcount > 0
            cursor.execute(f"{_SELECT} WHERE {column} = ?", (value,))
            found = cursor.fetchone()
            if changed and found is not None and self._announce is not None:
                self._announce(cursor, found[2])
            return found, changed

        row, changed = await self._database.write(work)
        if row is None:
            raise UnknownApiKeyError(value)
        return _record(row), changed

    async def rehash(self, key_id: int, old_hash: str, new_hash: str) -> bool:
        """Replace the key's hash, unless it changed since ``old_hash`` was read; whether
        it was replaced. Used to move keys from the password profile to a light hash."""

        def work(cursor: SqlCursor) -> bool:
            cursor.execute(
                "UPDATE api_keys SET hash = ? WHERE id = ? AND hash = ?",
                (new_hash, key_id, old_hash),
            )
            return bool(cursor.rowcount > 0)

        return await self._database.write(work)

    async def touch(self, key_id: int, at: float) -> None:
        """Set ``last_used_at`` to ``at``, unless it is already later (another node's use).

        One small write: callers do it at most once a minute per key.
        """

        def work(cursor: SqlCursor) -> None:
            cursor.execute(
                "UPDATE api_keys SET last_used_at = ? "
                "WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                (at, key_id, at),
            )

        await self._database.write(work)


def _insert_unless_taken(
    cursor: SqlCursor,
    *,
    row: tuple[object, ...],
    announce: Callable[[SqlCursor, str], None] | None = None,
) -> int | None:
    """Insert ``(name, prefix, hash, created_at)``; the new id, or None if the prefix is taken.

    ``ON CONFLICT DO NOTHING`` rather than catching the UNIQUE violation: each driver raises
    its own IntegrityError, and in PostgreSQL it would also abort the transaction.
    """
    cursor.execute(_INSERT, row)
    found = cursor.fetchone()
    if found is None:
        return None
    if announce is not None:
        announce(cursor, str(row[1]))
    return int(found[0])


def _reference(id_or_prefix: int | str) -> tuple[str, int | str]:
    """The column and value an operator's reference to a key means: digits are an id,
    any other text a prefix."""
    if isinstance(id_or_prefix, int):
        return "id", id_or_prefix
    text = id_or_prefix.strip()
    if text.isascii() and text.isdigit():
        return "id", int(text)
    return "prefix", text
