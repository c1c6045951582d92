"""What the API key verifier needs from outside security: the rows, and the audit log.

:class:`~dispatch.security.api_keys.ApiKeyVerifier` owns what a key is and how it is checked
(with :mod:`dispatch.security.key_format`); where keys are kept and how their changes are
audited belong to storage, which security does not import. The verifier talks to them
through these protocols; storage implements them (``dispatch.storage.api_keys.ApiKeyStore``,
``dispatch.storage.audit.ApiKeyAudit``) and the composition root hands them over.
"""

from __future__ import annotations

from typing import Any, Protocol


class KeyRecord(Protocol):
    """One stored key as the verifier reads it. Times are Unix seconds, ``None`` never.

    ``key_hash`` is the stored hash (``None`` in listings); ``public()`` is everything an
    operator may see, the hash excepted.
    """

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def revoked_at(self) -> float | None: ...
    @property
    def last_used_at(self) -> float | None: ...
    @property
    def key_hash(self) -> str | None: ...
    @property
    def revoked(self) -> bool: ...

    def public(self) -> dict[str, Any]: ...


class KeyRows(Protocol):
    """Where keys are kept: one row per key, found by its lookup prefix (unique).

    The prefix and the hash are opaque strings to the implementation. Every method raises
    one of :attr:`unavailable_errors` when the rows cannot be reached now; any other
    exception is a bug.
    """

    @property
    def unavailable_errors(self) -> tuple[type[Exception], ...]: ...

    async def insert(
        self, name: str, prefix: str, key_hash: str, *, now: float | None = None
    ) -> KeyRecord | None:
        """Store a new row; ``None`` when ``prefix`` is taken. ``ValueError``: a bad name."""
        ...

    async def find_by_prefix(self, prefix: str) -> KeyRecord | None:
        """The row with this prefix, its hash included, or ``None``."""
        ...

    async def revoke_reporting(
        self, id_or_prefix: int | str, *, now: float | None = None
    ) -> tuple[KeyRecord, bool]:
        """Revoke by id or prefix; the row and whether this call revoked it. Raises a
        ``KeyError`` that names the reference when no row matches."""
        ...

    async def rehash(self, key_id: int, old_hash: str, new_hash: str) -> bool:
        """Replace the hash unless it changed since ``old_hash`` was read."""
        ...

    async def touch(self, key_id: int, at: float) -> None:
        """Move ``last_used_at`` forward to ``at``, never back."""
        ...


class KeyAudit(Protocol):
    """Where the verifier reports what the audit log records (SPEC §7): creations,
    revocations, and a source throttled for presenting bad keys. Must not block."""

    def created(self, record: KeyRecord, *, actor: str) -> None: ...

    def revoked(self, record: KeyRecord, *, first_time: bool, actor: str, at: float) -> None: ...

    def throttled(self, source_ip: str, failures: int, window: float, retry_after: float) -> None:
        """``source_ip`` presented ``failures`` bad keys within ``window`` seconds and gets
        ``429`` for bad keys for ``retry_after`` seconds; reported once per throttling."""
        ...
