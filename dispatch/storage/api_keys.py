"""API keys in the database (SPEC §4 "Keys", §7): the key format and :class:`ApiKeyStore`.

Key format
----------
``dsp_live_`` followed by 32 random bytes (``secrets.token_bytes``) in URL-safe base64
without padding: 43 characters of ``A-Z a-z 0-9 - _``, 52 characters in all, 256 bits of
secret. Base64 rather than base32 keeps the key short and is what HTTP headers and
environment variables carry without quoting. Only the canonical encoding is well formed (the
last character carries 4 bits, its 2 spare bits must be zero), so every key has exactly one
spelling.

The **prefix** is ``dsp_live_`` plus the first 8 characters of the random part (48 bits).
It is stored in clear under a UNIQUE index: it finds the row, names the key in the
dashboard, the CLI and the message log, and is not enough to use the key. A new key whose
prefix is already taken (about one chance in 10^14 per key) is generated again.

Only an argon2id hash of the whole key is stored (SPEC §11). The full key exists in memory
at creation, is returned once by :meth:`ApiKeyStore.create`, and is never stored or logged.

Key hashes use argon2id with the lightest parameters (:data:`KEY_HASH_PARAMETERS`: one pass
over 64 KiB, ~0.07 ms), not the password profile (three passes over 64 MiB, ~150 ms and 64
MiB of memory per check). A password's hash must be slow because passwords are guessable; a
key is 256 random bits, which no number of guesses reaches however fast each one is, so a
slow hash would add nothing but a way for anyone presenting junk keys to spend the server's
CPU and memory. Keys created before this change carry a password-profile hash; the verifier
replaces it with a light one (:meth:`ApiKeyStore.rehash`) the first time the key is used.

Every method is one ``Database`` call (a worker thread) and raises
:class:`~dispatch.storage.database.DatabaseUnavailableError` when the database cannot be
used. The SQL is the portable subset described in ``schema.py``.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, Final

import argon2
import attrs

from dispatch.storage.database import Database, SqlCursor

KEY_PREFIX: Final = "dsp_live_"
SECRET_BYTES: Final = 32
SECRET_CHARS: Final = 43  # ceil(32 * 8 / 6): base64 without padding
KEY_LENGTH: Final = len(KEY_PREFIX) + SECRET_CHARS
LOOKUP_CHARS: Final = 8  # 48 bits: collisions are negligible, and retried anyway
PREFIX_LENGTH: Final = len(KEY_PREFIX) + LOOKUP_CHARS
MAX_NAME_LENGTH: Final = 100
# A retry per collision; ten collisions in a row would mean a broken random source.
_CREATE_ATTEMPTS: Final = 10

KEY_HASH_PARAMETERS: Final = {"time_cost": 1, "memory_cost": 64, "parallelism": 1}
"""argon2id parameters of key hashes (memory in KiB); see the module docstring."""
_KEY_HASHER: Final = argon2.PasswordHasher(
    time_cost=KEY_HASH_PARAMETERS["time_cost"],
    memory_cost=KEY_HASH_PARAMETERS["memory_cost"],
    parallelism=KEY_HASH_PARAMETERS["parallelism"],
)

_SECRET_SHAPE: Final = re.compile(rf"[A-Za-z0-9_-]{{{SECRET_CHARS}}}")
_PREFIX_SHAPE: Final = re.compile(re.escape(KEY_PREFIX) + rf"[A-Za-z0-9_-]{{{LOOKUP_CHARS}}}")


def new_api_key() -> str:
    """A fresh key: ``dsp_live_`` + 32 random bytes, URL-safe base64 without padding."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=")
    return KEY_PREFIX + secret.decode("ascii")


def is_well_formed(presented: str) -> bool:
    """Whether ``presented`` has the shape of a key (prefix, length, alphabet, canonical).

    Cheap and safe on hostile input: the length is checked before anything else.
    """
    if len(presented) != KEY_LENGTH or not presented.startswith(KEY_PREFIX):
        return False
    secret = presented[len(KEY_PREFIX) :]
    if not _SECRET_SHAPE.fullmatch(secret):
        return False
    try:
        raw = base64.urlsafe_b64decode(secret + "=")
    except (binascii.Error, ValueError):
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") == secret


def hash_api_key(key: str) -> str:
    """The stored form of ``key``: an argon2id hash with :data:`KEY_HASH_PARAMETERS`."""
    return _KEY_HASHER.hash(key)


def is_light_hash(key_hash: str) -> bool:
    """Whether ``key_hash`` is cheap to check (made by :func:`hash_api_key`, or lighter)."""
    try:
        parameters = argon2.extract_parameters(key_hash)
    except argon2.exceptions.InvalidHashError:
        return False
    return (
        parameters.time_cost <= KEY_HASH_PARAMETERS["time_cost"]
        and parameters.memory_cost <= KEY_HASH_PARAMETERS["memory_cost"]
        and parameters.parallelism <= KEY_HASH_PARAMETERS["parallelism"]
    )


def check_api_key(key_hash: str, key: str) -> bool:
    """Whether ``key`` matches ``key_hash`` (argon2's own constant-time compare).

    Blocking for as long as the hash's parameters say: call it on the event loop only for
    an :func:`is_light_hash`.
    """
    try:
        return _KEY_HASHER.verify(key_hash, key)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def prefix_of(key: str) -> str:
    """The lookup prefix of a (well-formed) key."""
    return key[:PREFIX_LENGTH]


def is_prefix(text: str) -> bool:
    """Whether ``text`` has the shape of a lookup prefix (``dsp_live_`` + 8 characters)."""
    return _PREFIX_SHAPE.fullmatch(text) is not None


class UnknownApiKeyError(KeyError):
    """No API key has the id or prefix given."""

    def __init__(self, reference: object) -> None:
        super().__init__(reference)
        self.reference = reference

    def __str__(self) -> str:  # KeyError's own would print the repr of the argument only
        return (
            f"no API key with id or prefix {self.reference!r} "
            f"(ids are numbers, prefixes look like {KEY_PREFIX}AbCd1234; "
            "see `dispatch api-key list`)"
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

    ``key_hash`` (the argon2id hash) is loaded only by :meth:`ApiKeyStore.find_by_prefix`,
    which the verifier needs; listings leave it ``None`` so that nothing built from a listing
    (a page, a JSON answer) can carry it. It is never part of the repr.
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

    Does not write audit entries: :class:`dispatch.security.api_keys.ApiKeyVerifier`'s
    ``create`` and ``revoke`` do, and are what the dashboard and the CLI call.
    """

    def __init__(self, database: Database) -> None:
        self._database = database

    async def create(self, name: str, *, now: float | None = None) -> tuple[ApiKeyRecord, str]:
        """Store a new key named ``name``; return its record and the full key.

        The full key is returned here and nowhere else, ever. Raises :class:`ValueError`
        for an empty or unprintable name.
        """
        name = _name(name)
        created_at = time.time() if now is None else now
        for _ in range(_CREATE_ATTEMPTS):
            key = new_api_key()
            key_hash = hash_api_key(key)  # light: see the module docstring
            row = (name, prefix_of(key), key_hash, created_at)
            key_id = await self._database.write(partial(_insert_unless_taken, row=row))
            if key_id is not None:
                record = ApiKeyRecord(
                    id=key_id, name=name, prefix=prefix_of(key), created_at=created_at
                )
                return record, key
        raise RuntimeError(f"{_CREATE_ATTEMPTS} new API keys in a row had a taken prefix")

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
        """Revoke a key by id, by prefix or by the full key; return its record.

        Idempotent: revoking a revoked key changes nothing and returns it with its first
        ``revoked_at``. Raises :class:`UnknownApiKeyError` when no key matches.
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
            return cursor.fetchone(), changed

        row, changed = await self._database.write(work)
        if row is None:
            raise UnknownApiKeyError(value)  # the prefix, never a full key given here
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


def _insert_unless_taken(cursor: SqlCursor, *, row: tuple[object, ...]) -> int | None:
    """Insert ``(name, prefix, hash, created_at)``; the new id, or None if the prefix is taken.

    ``ON CONFLICT DO NOTHING`` rather than catching the UNIQUE violation: each driver raises
    its own IntegrityError, and in PostgreSQL it would also abort the transaction.
    """
    cursor.execute(_INSERT, row)
    found = cursor.fetchone()
    return None if found is None else int(found[0])


def _reference(id_or_prefix: int | str) -> tuple[str, int | str]:
    """The column and value an operator's reference to a key means."""
    if isinstance(id_or_prefix, int):
        return "id", id_or_prefix
    text = id_or_prefix.strip()
    if text.isascii() and text.isdigit():
        return "id", int(text)
    if is_well_formed(text):
        return "prefix", prefix_of(text)  # the full key: revoke the key it is
    if is_prefix(text):
        return "prefix", text
    raise UnknownApiKeyError(id_or_prefix)
