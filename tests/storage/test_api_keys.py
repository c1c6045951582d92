"""The ``api_keys`` table through :class:`ApiKeyStore`, on real SQLite files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dispatch.storage import ApiKeyStore, SqliteDatabase, UnknownApiKeyError
from dispatch.storage import api_keys as api_keys_module
from dispatch.storage.api_keys import (
    KEY_LENGTH,
    KEY_PREFIX,
    PREFIX_LENGTH,
    is_well_formed,
    new_api_key,
    prefix_of,
)
from tests.storage.conftest import BASE, make_store, query


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "dispatch.db"


@pytest.fixture
async def keys(db: Path) -> AsyncIterator[ApiKeyStore]:
    database = SqliteDatabase(db)
    yield ApiKeyStore(database)
    await database.aclose()


def files_bytes(directory: Path) -> bytes:
    """Everything SQLite wrote: the database, its WAL and shared memory."""
    return b"".join(path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file())


def test_new_keys_have_the_documented_shape() -> None:
    made = {new_api_key() for _ in range(200)}
    assert len(made) == 200
    for key in made:
        assert len(key) == KEY_LENGTH == 52
        assert key.startswith(KEY_PREFIX)
        assert is_well_formed(key)
        assert len(prefix_of(key)) == PREFIX_LENGTH == 17


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dsp_live_",
        "Bearer dsp_live_" + "A" * 43,
        "dsp_test_" + "A" * 43,  # another prefix
        "dsp_live_" + "A" * 42,  # too short
        "dsp_live_" + "A" * 44,  # too long
        "dsp_live_" + "A" * 42 + "B",  # not canonical: the last character's spare bits are set
        "dsp_live_" + "A" * 41 + "+A",  # standard base64, not URL-safe
        "dsp_live_" + "A" * 41 + "=A",
        "dsp_live_" + "é" * 43,
        "dsp_live_" + "A" * 42 + "\n",
    ],
)
def test_malformed_keys_are_recognised(text: str) -> None:
    assert not is_well_formed(text)


async def test_create_returns_the_key_once_and_stores_only_its_hash(
    keys: ApiKeyStore, db: Path
) -> None:
    record, key = await keys.create("  billing app  ", now=BASE)
    assert is_well_formed(key)
    assert record.name == "billing app"
    assert record.prefix == prefix_of(key)
    assert record.created_at == BASE
    assert record.revoked_at is None
    assert record.last_used_at is None
    assert key not in repr(record)
    [(prefix, stored_hash)] = query(db, "SELECT prefix, hash FROM api_keys")
    assert prefix == record.prefix
    assert stored_hash.startswith("$argon2id$")
    on_disk = files_bytes(db.parent)
    assert record.prefix.encode() in on_disk  # the row is there ...
    assert key.encode() not in on_disk  # ... but neither the key
    assert key[PREFIX_LENGTH:].encode() not in on_disk  # nor its secret part


async def test_list_shows_every_key_without_hashes(keys: ApiKeyStore) -> None:
    first, _ = await keys.create("one", now=BASE)
    second, _ = await keys.create("two", now=BASE + 1)
    await keys.revoke(first.id, now=BASE + 2)
    listed = await keys.list()
    assert [r.id for r in listed] == [first.id, second.id]
    assert [r.revoked_at for r in listed] == [BASE + 2, None]
    assert all(r.key_hash is None for r in listed)
    assert "hash" not in listed[0].public()


async def test_find_by_prefix_returns_the_hash_but_never_shows_it(keys: ApiKeyStore) -> None:
    record, key = await keys.create("app")
    found = await keys.find_by_prefix(prefix_of(key))
    assert found == record
    assert found is not None
    assert found.key_hash is not None
    assert found.key_hash.startswith("$argon2id$")
    assert found.key_hash not in repr(found)
    assert await keys.find_by_prefix(prefix_of(new_api_key())) is None


async def test_lookup_by_prefix_uses_the_unique_index(keys: ApiKeyStore, db: Path) -> None:
    await keys.create("app")
    plan = query(db, "EXPLAIN QUERY PLAN SELECT * FROM api_keys WHERE prefix = ?", ("x",))
    assert "SEARCH api_keys USING INDEX sqlite_autoindex_api_keys_1 (prefix=?)" in str(plan)


async def test_revoke_by_id_prefix_or_key_is_idempotent(keys: ApiKeyStore) -> None:
    one, one_key = await keys.create("one")
    two, two_key = await keys.create("two")
    revoked = await keys.revoke(str(one.id), now=BASE)
    assert revoked.revoked_at == BASE
    again = await keys.revoke(one.prefix, now=BASE + 60)
    assert again.revoked_at == BASE  # the first revocation stands
    assert (await keys.revoke(one_key, now=BASE + 120)).revoked_at == BASE
    assert (await keys.revoke(two.id, now=BASE + 5)).revoked_at == BASE + 5
    assert two_key  # only its record was needed


@pytest.mark.parametrize("reference", [999, "999", "dsp_live_AAAAAAAA", "billing", ""])
async def test_revoking_an_unknown_key_says_so(keys: ApiKeyStore, reference: int | str) -> None:
    with pytest.raises(UnknownApiKeyError) as caught:
        await keys.revoke(reference)
    assert isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert message.startswith("no API key with id or prefix ")
    assert str(reference) in message
    assert "dispatch api-key list" in message


async def test_an_unknown_full_key_is_not_echoed(keys: ApiKeyStore) -> None:
    key = new_api_key()
    with pytest.raises(UnknownApiKeyError) as caught:
        await keys.revoke(key)
    assert prefix_of(key) in str(caught.value)
    assert key not in str(caught.value)


@pytest.mark.parametrize("name", ["", "   ", "tab\there", "x" * 101])
async def test_a_bad_name_is_refused(keys: ApiKeyStore, name: str) -> None:
    with pytest.raises(ValueError, match="API key name"):
        await keys.create(name)


async def test_touch_never_moves_last_used_backwards(keys: ApiKeyStore) -> None:
    record, _ = await keys.create("app")
    await keys.touch(record.id, BASE + 60)
    await keys.touch(record.id, BASE)  # a slower node reporting an older use
    [found] = await keys.list()
    assert found.last_used_at == BASE + 60


async def test_a_taken_prefix_is_generated_again(
    keys: ApiKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing, existing_key = await keys.create("first")
    clash = existing_key[:PREFIX_LENGTH] + new_api_key()[PREFIX_LENGTH:]
    fresh = new_api_key()
    planned: Iterator[str] = iter([clash, fresh])
    monkeypatch.setattr(api_keys_module, "new_api_key", lambda: next(planned))
    record, key = await keys.create("second")
    assert key == fresh
    assert record.prefix == prefix_of(fresh) != existing.prefix
    assert len(await keys.list()) == 2


async def test_the_store_exposes_its_api_keys(tmp_path: Path) -> None:
    store = make_store(tmp_path / "dispatch.db", tmp_path)
    record, key = await store.api_keys.create("app")
    assert await store.api_keys.find_by_prefix(prefix_of(key)) == record
    await store.database.aclose()
