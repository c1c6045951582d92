"""API key verification on a real SQLite database: cache, revocation, throttle, outages."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path

import pytest
import trio

from dispatch.lifecycle import Shutdown
from dispatch.security.api_keys import ApiKeyVerifier, Rejection, VerifiedKey
from dispatch.security.key_format import PREFIX_LENGTH, is_light_hash, new_api_key, prefix_of
from dispatch.security.passwords import hash_password
from dispatch.security.throttle import FailureThrottle
from dispatch.storage import ApiKeyStore, AuditEntry, SqlCursor, SqliteDatabase, UnknownApiKeyError
from dispatch.storage.audit import ApiKeyAudit

BASE = 1_800_000_000.0
IP = "192.0.2.10"
OTHER_IP = "192.0.2.20"


class CountingDatabase(SqliteDatabase):
    """A real SQLite database that counts the calls made to it."""

    calls = 0

    async def read[T](self, work: Callable[[SqlCursor], T]) -> T:
        self.calls += 1
        return await super().read(work)

    async def write[T](self, work: Callable[[SqlCursor], T]) -> T:
        self.calls += 1
        return await super().write(work)


class Clock:
    """Unix time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = BASE

    def __call__(self) -> float:
        return self.now


class Keys:
    """A database, its key store, a verifier on it and what the verifier audited."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Short busy timeout: a locked database is reported in 50 ms, keeping tests fast.
        self.database = CountingDatabase(path, busy_timeout=0.05)
        self.store = ApiKeyStore(self.database)
        self.audit: list[AuditEntry] = []
        self.clock = Clock()
        self.verifier = ApiKeyVerifier(
            self.store,
            ApiKeyAudit(self.audit.append),
            throttle=FailureThrottle(max_failures=3, window=60),
            clock=self.clock,
        )

    async def create(self, name: str = "app") -> str:
        _, key = await self.verifier.create(name, actor="test")
        return key

    def last_used(self) -> float | None:
        with closing(sqlite3.connect(self.path)) as connection:
            [(value,)] = connection.execute("SELECT last_used_at FROM api_keys").fetchall()
        return value  # type: ignore[no-any-return]


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[Keys]:
    made = Keys(tmp_path / "data" / "dispatch.db")
    yield made
    await made.database.aclose()


def accepted(answer: VerifiedKey | Rejection) -> VerifiedKey:
    assert isinstance(answer, VerifiedKey), answer
    return answer


def rejected(answer: VerifiedKey | Rejection, kind: str) -> Rejection:
    assert isinstance(answer, Rejection), answer
    assert answer.kind == kind
    return answer


def other_secret(key: str) -> str:
    """A well-formed key with the same prefix (the same row) and another secret."""
    return key[:PREFIX_LENGTH] + new_api_key()[PREFIX_LENGTH:]


async def test_a_good_key_is_checked_with_argon2_once_then_from_the_cache(keys: Keys) -> None:
    key = await keys.create("billing")
    first = accepted(await keys.verifier.verify(key, IP))
    assert (first.name, first.prefix, first.degraded) == ("billing", prefix_of(key), False)
    assert keys.verifier.stats.argon2_verifications == 1
    for _ in range(3):
        assert accepted(await keys.verifier.verify(key, IP)) == first
    assert keys.verifier.stats.argon2_verifications == 1
    assert keys.verifier.stats.cache_hits == 3
    assert keys.verifier.stats.lookups == 4  # the row is still read every time


async def test_concurrent_first_requests_share_one_argon2_check(keys: Keys) -> None:
    key = await keys.create()
    answers: list[VerifiedKey | Rejection] = []

    async def one() -> None:
        answers.append(await keys.verifier.verify(key, IP))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert all(isinstance(answer, VerifiedKey) for answer in answers)
    assert keys.verifier.stats.argon2_verifications == 1


async def test_a_wrong_secret_with_a_valid_prefix_is_rejected(keys: Keys) -> None:
    key = await keys.create()
    wrong = other_secret(key)
    answer = rejected(await keys.verifier.verify(wrong, IP), "wrong")
    assert answer.http_status == 401
    assert answer.detail == "invalid API key"
    assert keys.verifier.stats.argon2_verifications == 1
    accepted(await keys.verifier.verify(key, IP))  # caches the good key
    rejected(await keys.verifier.verify(wrong, IP), "wrong")
    assert keys.verifier.stats.argon2_verifications == 2  # the cached digest answered


async def test_an_unknown_key_is_rejected_without_argon2(keys: Keys) -> None:
    await keys.create()
    answer = rejected(await keys.verifier.verify(new_api_key(), IP), "unknown")
    assert answer.detail == "invalid API key"  # the same words as a wrong secret
    assert keys.verifier.stats.argon2_verifications == 0


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "Bearer",
        "dsp_live_",
        "dsp_test_" + "A" * 43,
        "dsp_live_" + "A" * 42 + "B",
        "dsp_live_" + "A" * 10_000,
        "dsp_live_" + "\u00e9" * 43,
    ],
)
async def test_a_malformed_key_is_rejected_without_a_database_query(
    keys: Keys, presented: str
) -> None:
    key = await keys.create()
    calls = keys.database.calls
    answer = rejected(await keys.verifier.verify(presented, IP), "malformed")
    assert answer.http_status == 401
    assert keys.database.calls == calls
    rejected(await keys.verifier.verify(key[:-1], OTHER_IP), "malformed")
    assert keys.database.calls == calls


async def test_revocation_from_another_node_is_effective_on_the_next_request(
    keys: Keys,
) -> None:
    key = await keys.create()
    accepted(await keys.verifier.verify(key, IP))
    accepted(await keys.verifier.verify(key, IP))  # cached now
    other_node = SqliteDatabase(keys.path)  # its own connection to the shared database
    try:
        await ApiKeyStore(other_node).revoke(prefix_of(key))
    finally:
        await other_node.aclose()
    answer = rejected(await keys.verifier.verify(key, IP), "revoked")
    assert answer.http_status == 401
    assert prefix_of(key) in answer.detail


async def test_create_and_revoke_are_audited_and_revoke_empties_the_cache(keys: Keys) -> None:
    key = await keys.create("billing")
    accepted(await keys.verifier.verify(key, IP))
    record, first_time = await keys.verifier.revoke(prefix_of(key), actor="admin")
    assert (record.revoked_at, first_time) == (BASE, True)
    keys.clock.now = BASE + 5
    record, first_time = await keys.verifier.revoke(record.id, actor="admin")
    assert (record.revoked_at, first_time) == (BASE, False)  # idempotent, audited as such
    rejected(await keys.verifier.verify(key, IP), "revoked")
    created, revoked, again = keys.audit
    assert (created.category, created.level, created.actor) == ("ApiKey", "Notice", "test")
    assert (revoked.category, revoked.level, revoked.actor) == ("ApiKey", "Notice", "admin")
    assert (again.category, again.level) == ("ApiKey", "Info")
    assert "created" in created.message
    assert "revoked" in revoked.message
    assert all(prefix_of(key) in entry.message for entry in keys.audit)
    assert all(key[PREFIX_LENGTH:] not in entry.message for entry in keys.audit)


async def test_revoke_by_id_prefix_or_key_is_idempotent(keys: Keys) -> None:
    one_key, two_key = await keys.create("one"), await keys.create("two")
    one, _ = await keys.verifier.revoke(one_key, actor="admin")  # the full key
    assert one.revoked_at == BASE
    keys.clock.now = BASE + 60
    again, first_time = await keys.verifier.revoke(prefix_of(one_key), actor="admin")
    assert (again.revoked_at, first_time) == (BASE, False)  # the first revocation stands
    assert (await keys.verifier.revoke(str(one.id), actor="admin"))[0].revoked_at == BASE
    two, first_time = await keys.verifier.revoke(f" {two_key}\n", actor="admin")
    assert (two.name, two.revoked_at, first_time) == ("two", BASE + 60, True)
    assert all(one_key[PREFIX_LENGTH:] not in entry.message for entry in keys.audit)


async def test_an_unknown_full_key_is_not_echoed(keys: Keys) -> None:
    key = new_api_key()
    with pytest.raises(UnknownApiKeyError) as caught:
        await keys.verifier.revoke(key, actor="admin")
    assert prefix_of(key) in str(caught.value)
    assert key not in str(caught.value)
    assert keys.audit == []


async def throttle(keys: Keys, key: str, ip: str) -> None:
    """Three failures of three kinds from ``ip``: the throttle's limit in these tests."""
    rejected(await keys.verifier.verify(other_secret(key), ip), "wrong")
    rejected(await keys.verifier.verify(new_api_key(), ip), "unknown")
    rejected(await keys.verifier.verify("nonsense", ip), "malformed")


async def test_junk_from_a_throttled_address_gets_429_without_a_database_query(
    keys: Keys,
) -> None:
    key = await keys.create()
    await throttle(keys, key, IP)
    calls = keys.database.calls
    answer = rejected(await keys.verifier.verify("nonsense", IP), "throttled")
    assert answer.http_status == 429
    assert answer.retry_after is not None
    assert 0 < answer.retry_after <= 60
    assert keys.database.calls == calls  # malformed junk costs nothing
    for junk in (new_api_key(), other_secret(key)):
        rejected(await keys.verifier.verify(junk, IP), "throttled")
    accepted(await keys.verifier.verify(key, OTHER_IP))


async def test_a_valid_key_gets_through_from_a_throttled_address(keys: Keys) -> None:
    """Regression (issue 11, item 2): junk from a shared address (a NAT, 127.0.0.1) used to
    lock every valid key out of it for the throttle window."""
    key = await keys.create("first use from the throttled address")
    used = await keys.create("used before")
    accepted(await keys.verifier.verify(used, IP))
    await throttle(keys, key, IP)
    assert accepted(await keys.verifier.verify(key, IP)).prefix == prefix_of(key)
    accepted(await keys.verifier.verify(used, IP))
    rejected(await keys.verifier.verify(other_secret(key), IP), "throttled")  # still junk
    assert keys.verifier.stats.slow_verifications == 0


def store_password_profile_hash(keys: Keys, key: str) -> None:
    """Give the key the hash keys had before light hashes: argon2's password profile."""
    with closing(sqlite3.connect(keys.path)) as connection, connection:
        connection.execute(
            "UPDATE api_keys SET hash = ? WHERE prefix = ?", (hash_password(key), prefix_of(key))
        )


async def test_new_keys_get_a_light_hash(keys: Keys) -> None:
    key = await keys.create()
    record = await keys.store.find_by_prefix(prefix_of(key))
    assert record is not None
    assert record.key_hash is not None
    assert record.key_hash.startswith("$argon2id$v=19$m=64,t=1,p=1$")
    assert is_light_hash(record.key_hash)


async def test_an_old_slow_hash_is_replaced_at_the_first_use(keys: Keys) -> None:
    key = await keys.create()
    store_password_profile_hash(keys, key)
    shutdown = Shutdown(grace_seconds=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(keys.verifier.run, shutdown)
        accepted(await keys.verifier.verify(key, IP))
        assert keys.verifier.stats.slow_verifications == 1
        await keys.verifier.wait_until_touched()
        shutdown.request()
    assert keys.verifier.stats.rehashed == 1
    record = await keys.store.find_by_prefix(prefix_of(key))
    assert record is not None
    assert record.key_hash is not None
    assert is_light_hash(record.key_hash)
    fresh = ApiKeyVerifier(keys.store, ApiKeyAudit(keys.audit.append))  # a restart: nothing cached
    accepted(await fresh.verify(key, IP))
    rejected(await fresh.verify(other_secret(key), IP), "wrong")
    assert fresh.stats.slow_verifications == 0


async def test_a_throttled_address_buys_no_slow_check_of_an_old_hash(keys: Keys) -> None:
    key = await keys.create()
    store_password_profile_hash(keys, key)
    await throttle(keys, key, IP)
    assert keys.verifier.stats.slow_verifications == 1  # the wrong secret, before the throttle
    for presented in (other_secret(key), key):
        rejected(await keys.verifier.verify(presented, IP), "throttled")
    assert keys.verifier.stats.slow_verifications == 1
    accepted(await keys.verifier.verify(key, OTHER_IP))
    accepted(await keys.verifier.verify(key, IP))  # proven elsewhere: compared by digest now


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process holds the database's exclusive lock."""
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        yield
        other.execute("ROLLBACK")


@contextmanager
def not_a_database(path: Path) -> Iterator[None]:
    """The database (with its WAL) is moved away and a file that is not one put there."""
    moved = [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm")]
    for file in moved:
        if file.exists():
            os.rename(file, file.with_name("saved-" + file.name))
    path.write_bytes(b"this is not a database\n" * 400)
    yield
    for file in path.parent.iterdir():
        if not file.name.startswith("saved-"):
            file.unlink()
    for file in moved:
        saved = file.with_name("saved-" + file.name)
        if saved.exists():
            os.rename(saved, file)


@asynccontextmanager
async def outage(keys: Keys, kind: str) -> AsyncIterator[None]:
    if kind == "locked":
        await keys.database.aclose()  # so that the other connection can take every lock
        with locked(keys.path):
            yield
    else:
        with not_a_database(keys.path):
            yield


@pytest.mark.parametrize("kind", ["locked", "not a database"])
async def test_while_the_database_is_unavailable_only_verified_keys_pass(
    keys: Keys, kind: str
) -> None:
    key = await keys.create("verified")
    never_used = await keys.create("never used")
    accepted(await keys.verifier.verify(key, IP))
    async with outage(keys, kind):
        answer = accepted(await keys.verifier.verify(key, IP))
        assert answer.degraded
        assert not keys.verifier.database_reachable
        for unknown in (never_used, new_api_key()):
            refused = rejected(await keys.verifier.verify(unknown, IP), "unavailable")
            assert refused.http_status == 503
            assert refused.retry_after is not None
            assert refused.retry_after > 0
        rejected(await keys.verifier.verify(other_secret(key), IP), "wrong")
    assert keys.verifier.stats.accepted_while_unavailable == 1
    assert keys.verifier.stats.argon2_verifications == 1
    assert not accepted(await keys.verifier.verify(never_used, IP)).degraded
    assert keys.verifier.database_reachable


async def test_last_used_is_written_in_the_background_at_most_once_a_minute(
    keys: Keys,
) -> None:
    key = await keys.create()
    accepted(await keys.verifier.verify(key, IP))
    assert keys.last_used() is None  # not on the request path: nothing writes it yet
    shutdown = Shutdown(grace_seconds=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(keys.verifier.run, shutdown)
        await keys.verifier.wait_until_touched()
        assert keys.last_used() == BASE

        keys.clock.now = BASE + 30
        accepted(await keys.verifier.verify(key, IP))
        await keys.verifier.wait_until_touched()
        assert keys.last_used() == BASE
        assert keys.verifier.stats.touches_written == 1

        keys.clock.now = BASE + 61
        accepted(await keys.verifier.verify(key, IP))
        await keys.verifier.wait_until_touched()
        assert keys.last_used() == BASE + 61
        assert keys.verifier.stats.touches_written == 2
        shutdown.request()


async def test_a_use_noted_while_the_database_is_down_is_written_when_it_returns(
    keys: Keys,
) -> None:
    key = await keys.create()
    accepted(await keys.verifier.verify(key, IP))  # noted, not written: no task
    with not_a_database(keys.path):
        keys.clock.now = BASE + 120
        assert accepted(await keys.verifier.verify(key, IP)).degraded
        shutdown = Shutdown(grace_seconds=5)
        async with trio.open_nursery() as nursery:
            await nursery.start(keys.verifier.run, shutdown)
            await trio.sleep(0.05)  # the writer tries, fails and backs off
            assert keys.verifier.stats.touches_written == 0
            nursery.cancel_scope.cancel()
    shutdown = Shutdown(grace_seconds=5)
    shutdown.request()
    await keys.verifier.run(shutdown)  # stopping writes what is pending
    assert keys.last_used() == BASE + 120
