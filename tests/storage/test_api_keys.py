"""The ``api_keys`` table through :class:`ApiKeyStore`, on SQLite and PostgreSQL.

To storage a key's prefix and hash are opaque strings (what a key looks like and how it is
hashed are security's: tests/security/test_key_format.py); the rows here carry made-up ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatch.storage import ApiKeyStore, SqliteDatabase, UnknownApiKeyError
from tests.storage.conftest import BASE, DbRef, database_for, make_store, query

HASH = "$argon2id$v=19$m=64,t=1,p=1$opaque-to-storage"


@pytest.fixture
async def keys(db: DbRef) -> AsyncIterator[ApiKeyStore]:
    database = database_for(db)
    yield ApiKeyStore(database)
    await database.aclose()


async def add(keys: ApiKeyStore, name: str, prefix: str, *, now: float = BASE) -> int:
    record = await keys.insert(name, prefix, HASH, now=now)
    assert record is not None
    return record.id


async def test_insert_stores_the_row_and_returns_its_record(keys: ApiKeyStore, db: DbRef) -> None:
    record = await keys.insert("  billing app  ", "dsp_live_AbCd1234", HASH, now=BASE)
    assert record is not None
    assert (record.name, record.prefix, record.created_at) == (
        "billing app",
        "dsp_live_AbCd1234",
        BASE,
    )
    assert (record.revoked_at, record.last_used_at) == (None, None)
    assert HASH not in repr(record)
    [(prefix, stored_hash)] = query(db, "SELECT prefix, hash FROM api_keys")
    assert (prefix, stored_hash) == (record.prefix, HASH)


async def test_a_taken_prefix_is_refused_with_none(keys: ApiKeyStore) -> None:
    await add(keys, "first", "dsp_live_AbCd1234")
    assert await keys.insert("second", "dsp_live_AbCd1234", "another hash") is None
    [only] = await keys.list()
    assert only.name == "first"


async def test_list_shows_every_key_without_hashes(keys: ApiKeyStore) -> None:
    first = await add(keys, "one", "dsp_live_11111111", now=BASE)
    second = await add(keys, "two", "dsp_live_22222222", now=BASE + 1)
    await keys.revoke(first, now=BASE + 2)
    listed = await keys.list()
    assert [r.id for r in listed] == [first, second]
    assert [r.revoked_at for r in listed] == [BASE + 2, None]
    assert all(r.key_hash is None for r in listed)
    assert "hash" not in listed[0].public()


async def test_find_by_prefix_returns_the_hash_but_never_shows_it(keys: ApiKeyStore) -> None:
    key_id = await add(keys, "app", "dsp_live_AbCd1234")
    found = await keys.find_by_prefix("dsp_live_AbCd1234")
    assert found is not None
    assert found.id == key_id
    assert found.key_hash == HASH
    assert found.key_hash not in repr(found)
    assert await keys.find_by_prefix("dsp_live_Zzzzzzzz") is None


async def test_lookup_by_prefix_uses_the_unique_index(tmp_path: Path) -> None:
    db = tmp_path / "dispatch.db"  # SQLite's plan
    database = SqliteDatabase(db)
    await add(ApiKeyStore(database), "app", "dsp_live_AbCd1234")
    await database.aclose()
    plan = query(db, "EXPLAIN QUERY PLAN SELECT * FROM api_keys WHERE prefix = ?", ("x",))
    assert "SEARCH api_keys USING INDEX sqlite_autoindex_api_keys_1 (prefix=?)" in str(plan)


async def test_revoke_by_id_or_prefix_is_idempotent(keys: ApiKeyStore) -> None:
    one = await add(keys, "one", "dsp_live_11111111")
    two = await add(keys, "two", "dsp_live_22222222")
    revoked = await keys.revoke(str(one), now=BASE)
    assert revoked.revoked_at == BASE
    again = await keys.revoke("dsp_live_11111111", now=BASE + 60)
    assert again.revoked_at == BASE  # the first revocation stands
    record, first_time = await keys.revoke_reporting(one, now=BASE + 120)
    assert (record.revoked_at, first_time) == (BASE, False)
    assert (await keys.revoke(two, now=BASE + 5)).revoked_at == BASE + 5


@pytest.mark.parametrize("reference", [999, "999", "dsp_live_AAAAAAAA", "billing", ""])
async def test_revoking_an_unknown_key_says_so(keys: ApiKeyStore, reference: int | str) -> None:
    with pytest.raises(UnknownApiKeyError) as caught:
        await keys.revoke(reference)
    assert isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert message.startswith("no API key with id or prefix ")
    assert str(reference) in message
    assert "dispatch api-key list" in message


@pytest.mark.parametrize("name", ["", "   ", "tab\there", "x" * 101])
async def test_a_bad_name_is_refused(keys: ApiKeyStore, name: str) -> None:
    with pytest.raises(ValueError, match="API key name"):
        await keys.insert(name, "dsp_live_AbCd1234", HASH)
    assert await keys.list() == []


async def test_touch_never_moves_last_used_backwards(keys: ApiKeyStore) -> None:
    key_id = await add(keys, "app", "dsp_live_AbCd1234")
    await keys.touch(key_id, BASE + 60)
    await keys.touch(key_id, BASE)  # a slower node reporting an older use
    [found] = await keys.list()
    assert found.last_used_at == BASE + 60


async def test_rehash_replaces_only_the_hash_it_was_told_of(keys: ApiKeyStore) -> None:
    key_id = await add(keys, "app", "dsp_live_AbCd1234")
    assert not await keys.rehash(key_id, "not the stored hash", "new")
    assert await keys.rehash(key_id, HASH, "new")
    found = await keys.find_by_prefix("dsp_live_AbCd1234")
    assert found is not None
    assert found.key_hash == "new"


async def test_the_store_exposes_its_api_keys(db: DbRef, tmp_path: Path) -> None:
    store = make_store(db, tmp_path)
    record = await store.api_keys.insert("app", "dsp_live_AbCd1234", HASH)
    assert await store.api_keys.find_by_prefix("dsp_live_AbCd1234") == record
    await store.database.aclose()
