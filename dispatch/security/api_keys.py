"""Checking the API key of a request (SPEC §4 "Keys", §11): :class:`ApiKeyVerifier`.

Theory of operation
-------------------
:meth:`ApiKeyVerifier.verify` answers :class:`VerifiedKey` or :class:`Rejection`; the first
step that decides wins:

1. The text is not shaped like a key (``dsp_live_`` + 43 base64url characters, see
   ``dispatch/security/key_format.py``): ``malformed``. The database is not asked.
2. The row is looked up by its prefix — one indexed read, on **every** request.
3. No row: ``unknown``. A revoked row: ``revoked``.
4. The secret is checked, cheaply: a key proven valid here before is compared as
   ``sha256(key)`` with :func:`hmac.compare_digest`; otherwise against the stored hash, a
   light argon2id (~0.07 ms, on the event loop; see ``dispatch/security/key_format.py``
   for why a key needs no slow hash). A mismatch: ``wrong``.

Failures (malformed, unknown, revoked, wrong) count against the source IP
(:class:`FailureThrottle`); a success does not clear them, or an attacker holding one valid
key could interleave it with guesses. The failure that throttles a source is logged and
audited (once: the refusals that follow are not). A **throttled** address still has every key it
presents checked, because checking costs no more than refusing: a valid key always gets
through (one address may be a NAT, or 127.0.0.1, shared with whoever sends junk), and
junk from it is answered ``throttled`` (``429``) instead of ``401``.

The one slow case is a key whose stored hash predates light hashes (the password profile,
~150 ms and 64 MiB): the first use of such a key is checked in a worker thread under the
process-wide password limit (concurrent first requests for one key share one check), and
on success its hash is replaced by a light one, written in the background by :meth:`run`.
From a throttled address that slow check is not made (``throttled``): junk must not buy
slow checks, and the key works again from there once another address used it or the
throttle window passed.

Why revocation takes effect on the next request, from any node sharing the database: the
cache answers only "is this the right secret", never "is this key still valid". Whether the
row exists and is unrevoked is read from the database on the request itself (step 3), before
the cache is consulted, so a revocation committed anywhere is seen by every later lookup.
A row found revoked or gone is also dropped from the cache.

When the database cannot be read (one of the rows' ``unavailable_errors``, or no answer
within :data:`LOOKUP_TIMEOUT`), the cache is the only knowledge left: a key whose
digest is cached is accepted (``VerifiedKey.degraded``), because mail is never refused for
a database outage (SPEC §0); any other key gets ``unavailable`` (the API answers 503 with
``Retry-After``). The price: a key revoked on another node, which this node had not yet seen
revoked when the outage began, keeps working here until the database answers again.

``last_used_at`` is written at most once per :data:`TOUCH_INTERVAL` per key, and never on the
request path: :meth:`verify` notes the use and :meth:`run`, a long-lived task, writes it.

Creating and revoking keys also go through this class (:meth:`create`, :meth:`revoke`) so
that each writes its audit entry and a local revocation also empties the local cache.

The rows and the audit log are reached through the protocols of
:mod:`dispatch.security.key_rows` (storage implements them; security imports no storage).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, Literal

import attrs
import trio

from dispatch.lifecycle import Shutdown
from dispatch.security.key_format import (
    check_api_key,
    hash_api_key,
    is_light_hash,
    is_well_formed,
    new_api_key,
    prefix_of,
    stored_reference,
)
from dispatch.security.key_rows import KeyAudit, KeyRecord, KeyRows
from dispatch.security.passwords import verify_password
from dispatch.security.throttle import FailureThrottle

log = logging.getLogger("dispatch.security")

# SPEC §4 asks for "last used", not an access log: to the minute is precise enough to tell a
# key in use from a forgotten one, and keeps a busy key to one small write a minute.
TOUCH_INTERVAL: Final = 60.0
TOUCH_RETRY_SECONDS: Final = 5.0
SAVE_TOUCHES_TIMEOUT: Final = 2.0
# Longer than SQLite's busy timeout (1 s), so a briefly held lock is waited out, and short
# enough that an API client hears 503 instead of timing out. Bounds the wait for the
# database's worker (a query already running in its thread is waited for).
LOOKUP_TIMEOUT: Final = 2.0
# What the API puts in Retry-After when the key store cannot be read.
UNAVAILABLE_RETRY_AFTER: Final = 5
# A retry per prefix collision; ten collisions in a row would mean a broken random source.
CREATE_ATTEMPTS: Final = 10

RejectionKind = Literal["throttled", "malformed", "unknown", "revoked", "wrong", "unavailable"]

_HTTP_STATUS: Final[dict[RejectionKind, int]] = {
    "throttled": 429,
    "malformed": 401,
    "unknown": 401,
    "revoked": 401,
    "wrong": 401,
    "unavailable": 503,
}
_INVALID: Final = "invalid API key"


@attrs.frozen
class VerifiedKey:
    """A request's key is valid. ``degraded``: accepted from the cache, database unreadable."""

    key_id: int
    name: str
    prefix: str
    degraded: bool = False


@attrs.frozen
class Rejection:
    """A request's key is refused.

    ``detail`` is safe to send to the client (it does not tell an unknown key from a wrong
    secret); ``retry_after`` (whole seconds, for the ``Retry-After`` header) is set for
    ``throttled`` and ``unavailable``.
    """

    kind: RejectionKind
    detail: str
    retry_after: int | None = None

    @property
    def http_status(self) -> int:
        """429 throttled, 503 unavailable, else 401 (SPEC §4)."""
        return _HTTP_STATUS[self.kind]


@attrs.define
class VerifierStats:
    """Counts for ``/metrics`` and the debug pages (and for tests to see which path ran)."""

    lookups: int = 0
    argon2_verifications: int = 0
    slow_verifications: int = 0  # of password-profile hashes, before their rehash
    rehashed: int = 0
    cache_hits: int = 0
    accepted: int = 0
    accepted_while_unavailable: int = 0
    touches_written: int = 0
    rejected: Counter[RejectionKind] = attrs.Factory(Counter)


@attrs.frozen
class _CachedKey:
    """A key proven valid here: its row (id and stored hash) and ``sha256(key)``."""

    key_id: int
    name: str
    key_hash: str = attrs.field(repr=False)
    digest: bytes = attrs.field(repr=False)


class _KeyStoreUnavailable(Exception):
    pass


class ApiKeyVerifier:
    """The API keys as requests and operators use them; see the module docstring.

    Owns the digest cache, the pending ``last_used_at`` updates and (unless given one) its
    failure throttle. ``store`` holds the rows; ``audit`` hears of each creation, each
    revocation and each source newly throttled (in the daemon ``Store.api_keys`` and a
    ``dispatch.storage.audit.ApiKeyAudit``). Use from the Trio thread only.
    """

    def __init__(
        self,
        store: KeyRows,
        audit: KeyAudit,
        *,
        throttle: FailureThrottle | None = None,
        clock: Callable[[], float] = time.time,
        lookup_timeout: float = LOOKUP_TIMEOUT,
    ) -> None:
        self._store = store
        self._audit = audit
        self._throttle = FailureThrottle() if throttle is None else throttle
        self._clock = clock  # Unix time: it is what last_used_at and created_at store
        self._lookup_timeout = lookup_timeout
        self._cache: dict[str, _CachedKey] = {}  # by prefix
        self._checking: dict[str, trio.Event] = {}  # argon2 checks in flight, by prefix
        self._noted_use: dict[int, float] = {}  # key id -> last use queued for writing
        self._touches: dict[int, float] = {}  # key id -> last_used_at to write
        self._rehashes: dict[int, tuple[str, str]] = {}  # key id -> (old hash, light hash)
        self._touch_wanted = trio.Event()
        self._touches_written = trio.Event()
        self._touches_written.set()
        self.database_reachable = True
        """Whether the last lookup could read the database."""
        self.stats = VerifierStats()

    # -- requests --------------------------------------------------------------------------

    async def verify(self, presented: str, source_ip: str) -> VerifiedKey | Rejection:
        """Check the key a request presented (the text after ``Bearer``) from ``source_ip``."""
        throttled_for = self._throttle.retry_after(source_ip)
        if not is_well_formed(presented):
            return self._failed(source_ip, "malformed", _INVALID, throttled_for)
        prefix = prefix_of(presented)
        digest = hashlib.sha256(presented.encode("ascii")).digest()
        try:
            record = await self._lookup(prefix)
        except _KeyStoreUnavailable:
            return self._verify_from_cache(prefix, digest, source_ip, throttled_for)
        if record is None:
            self._cache.pop(prefix, None)
            return self._failed(source_ip, "unknown", _INVALID, throttled_for)
        if record.revoked:
            self._cache.pop(prefix, None)
            detail = f"API key {prefix} has been revoked"
            return self._failed(source_ip, "revoked", detail, throttled_for)
        matches = await self._secret_matches(record, presented, digest, throttled_for > 0)
        if matches is None:
            return self._throttled(throttled_for)
        if not matches:
            return self._failed(source_ip, "wrong", _INVALID, throttled_for)
        self._note_use(record.id, record.last_used_at)
        self.stats.accepted += 1
        return VerifiedKey(key_id=record.id, name=record.name, prefix=record.prefix)

    def forget(self, prefix: str | None) -> None:
        """Drop the cached key ``prefix`` (every cached key: ``None``), because it changed on
        another node: the cache must not accept it during a later database outage."""
        if prefix is None:
            self._cache.clear()
        else:
            self._cache.pop(prefix, None)

    async def _lookup(self, prefix: str) -> KeyRecord | None:
        self.stats.lookups += 1
        with trio.move_on_after(self._lookup_timeout):
            try:
                record = await self._store.find_by_prefix(prefix)
            except self._store.unavailable_errors as exc:
                self._database_failed(str(exc) or type(exc).__name__)
                raise _KeyStoreUnavailable from exc
            if not self.database_reachable:
                log.info("API key store reachable again")
                self.database_reachable = True
            return record
        self._database_failed(f"no answer within {self._lookup_timeout:g} s")
        raise _KeyStoreUnavailable

    def _database_failed(self, reason: str) -> None:
        if self.database_reachable:
            log.warning(
                "API key store unavailable, accepting only keys verified before: %s", reason
            )
        self.database_reachable = False

    def _verify_from_cache(
        self, prefix: str, digest: bytes, source_ip: str, throttled_for: float
    ) -> VerifiedKey | Rejection:
        cached = self._cache.get(prefix)
        if cached is None:
            detail = "the API key store is unavailable; try again shortly"
            return self._rejected("unavailable", detail, retry_after=UNAVAILABLE_RETRY_AFTER)
        self.stats.cache_hits += 1
        if not hmac.compare_digest(cached.digest, digest):
            return self._failed(source_ip, "wrong", _INVALID, throttled_for)
        self._note_use(cached.key_id, None)
        self.stats.accepted += 1
        self.stats.accepted_while_unavailable += 1
        return VerifiedKey(key_id=cached.key_id, name=cached.name, prefix=prefix, degraded=True)

    async def _secret_matches(
        self, record: KeyRecord, presented: str, digest: bytes, throttled: bool
    ) -> bool | None:
        """Whether ``presented`` is the key of ``record``; None when finding out would take
        a slow check and the address is throttled (see the module docstring)."""
        prefix = record.prefix
        while (running := self._checking.get(prefix)) is not None:
            await running.wait()  # a first request for this key is being checked: reuse it
        stored_hash = record.key_hash or ""
        cached = self._cache.get(prefix)
        if cached is not None:
            if cached.key_id == record.id and hmac.compare_digest(cached.key_hash, stored_hash):
                self.stats.cache_hits += 1
                return hmac.compare_digest(cached.digest, digest)
            del self._cache[prefix]  # the row was replaced since: check it afresh
        if is_light_hash(stored_hash):
            self.stats.argon2_verifications += 1
            matches = check_api_key(stored_hash, presented)  # ~0.07 ms: no thread hop
        elif throttled:
            return None
        else:
            matches = await self._slow_check(record, stored_hash, presented)
        if matches:
            self._cache[prefix] = _CachedKey(record.id, record.name, stored_hash, digest)
        return matches

    async def _slow_check(self, record: KeyRecord, stored_hash: str, presented: str) -> bool:
        """Check a password-profile hash (a key made before light hashes); on success, queue
        its replacement by a light hash."""
        done = self._checking[record.prefix] = trio.Event()
        try:
            self.stats.argon2_verifications += 1
            self.stats.slow_verifications += 1
            matches = await verify_password(stored_hash, presented)
        finally:
            del self._checking[record.prefix]
            done.set()
        if matches:
            self._rehashes[record.id] = (stored_hash, hash_api_key(presented))
            self._wake_writer()
        return matches

    def _failed(
        self, source_ip: str, kind: RejectionKind, detail: str, throttled_for: float
    ) -> Rejection:
        if throttled_for > 0:
            # Not counted again: the window runs from the failures that caused it.
            return self._throttled(throttled_for)
        self._throttle.record_failure(source_ip)
        if self._throttle.newly_throttled(source_ip):
            wait = self._throttle.retry_after(source_ip)
            failures = self._throttle.max_failures
            log.warning("API: %s throttled after %d bad keys", source_ip, failures)
            self._audit.throttled(source_ip, failures, self._throttle.window, wait)
        return self._rejected(kind, detail)

    def _throttled(self, throttled_for: float) -> Rejection:
        detail = "too many failed API key attempts from this address; try again later"
        return self._rejected("throttled", detail, retry_after=math.ceil(throttled_for))

    def _rejected(
        self, kind: RejectionKind, detail: str, *, retry_after: int | None = None
    ) -> Rejection:
        self.stats.rejected[kind] += 1
        return Rejection(kind, detail, retry_after)

    # -- last_used_at ----------------------------------------------------------------------

    def _note_use(self, key_id: int, last_used_at: float | None) -> None:
        """Queue a ``last_used_at`` write if the key's last one is a minute old."""
        now = self._clock()
        last = max(
            -math.inf if last_used_at is None else last_used_at,
            self._noted_use.get(key_id, -math.inf),
        )
        if now - last < TOUCH_INTERVAL:
            return
        self._noted_use[key_id] = now
        self._touches[key_id] = now
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._touches_written.is_set():
            self._touches_written = trio.Event()
        self._touch_wanted.set()

    async def run(
        self,
        shutdown: Shutdown,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The ``last_used_at`` (and light-hash) writer: a supervisor component.

        Ready at once. Writes each noted use and each queued rehash in the background,
        retrying every :data:`TOUCH_RETRY_SECONDS` while the database fails. When
        ``shutdown.requested`` is set it makes one attempt of at most
        :data:`SAVE_TOUCHES_TIMEOUT` seconds to write what is pending and returns; an
        unwritten use only leaves ``last_used_at`` older, an unwritten rehash is made again
        at the key's next first use.
        """
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_touches_forever)
            await shutdown.requested.wait()
            nursery.cancel_scope.cancel()
        with trio.move_on_after(SAVE_TOUCHES_TIMEOUT):
            await self._write_touches()

    async def wait_until_touched(self) -> None:
        """Return once every noted use and queued rehash is in the database (for tests and
        orderly stops)."""
        while self._touches or self._rehashes:
            await self._touches_written.wait()

    async def _write_touches_forever(self) -> None:
        while True:
            await self._touch_wanted.wait()
            self._touch_wanted = trio.Event()
            if not await self._write_touches():
                await trio.sleep(TOUCH_RETRY_SECONDS)
                self._touch_wanted.set()

    async def _write_touches(self) -> bool:
        """Write the pending rehashes and uses; return False if the database failed (they
        stay pending)."""
        while self._rehashes:
            key_id, (old_hash, new_hash) = next(iter(self._rehashes.items()))
            try:
                replaced = await self._store.rehash(key_id, old_hash, new_hash)
            except self._store.unavailable_errors as exc:
                log.debug("cannot store the light hash of API key %d yet: %s", key_id, exc)
                return False
            if self._rehashes.get(key_id) == (old_hash, new_hash):
                del self._rehashes[key_id]
            if replaced:
                self.stats.rehashed += 1
                log.info("API key %d: stored hash replaced by a light one", key_id)
        while self._touches:
            key_id, at = next(iter(self._touches.items()))
            try:
                await self._store.touch(key_id, at)
            except self._store.unavailable_errors as exc:
                log.debug("cannot record the use of API key %d yet: %s", key_id, exc)
                return False
            if self._touches.get(key_id) == at:  # not noted again meanwhile
                del self._touches[key_id]
            self.stats.touches_written += 1
        self._touches_written.set()
        return True

    # -- operators -------------------------------------------------------------------------

    async def create(self, name: str, *, actor: str) -> tuple[KeyRecord, str]:
        """Create a key; return its record and the full key, to be shown once.

        Raises :class:`ValueError` for a bad name, one of the rows' ``unavailable_errors``
        if they cannot be written.
        """
        record, key = await create_api_key(self._store, name, now=self._clock())
        self._audit.created(record, actor=actor)
        return record, key

    async def revoke(self, id_or_prefix: int | str, *, actor: str) -> tuple[KeyRecord, bool]:
        """Revoke a key by id, prefix or full key (idempotent).

        Returns the record and whether this call revoked it (False: it already was).
        Raises the rows' ``KeyError`` (``dispatch.storage.UnknownApiKeyError``) when no key
        matches; it names the key's prefix, never a full key given here.
        """
        at = self._clock()
        reference = stored_reference(id_or_prefix)
        record, first_time = await self._store.revoke_reporting(reference, now=at)
        self._cache.pop(record.prefix, None)
        self._audit.revoked(record, first_time=first_time, actor=actor, at=at)
        return record, first_time


async def create_api_key(
    rows: KeyRows, name: str, *, now: float | None = None
) -> tuple[KeyRecord, str]:
    """Make a key named ``name`` and store its row; return the record and the full key.

    The full key is returned here and nowhere else, ever: only its prefix and a light hash
    are stored. A key whose prefix is taken is made again. Writes no audit entry
    (:meth:`ApiKeyVerifier.create` does); raises :class:`ValueError` for a bad name.
    """
    for _ in range(CREATE_ATTEMPTS):
        key = new_api_key()
        record = await rows.insert(name, prefix_of(key), hash_api_key(key), now=now)
        if record is not None:
            return record, key
    raise RuntimeError(f"{CREATE_ATTEMPTS} new API keys in a row had a taken prefix")
