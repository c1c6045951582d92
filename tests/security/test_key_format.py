"""What an API key is: its format, and keys made by ``create_api_key`` into a real SQLite
database (only the prefix and a light argon2id hash are stored)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dispatch.security import api_keys as api_keys_module
from dispatch.security.api_keys import create_api_key
from dispatch.security.key_format import (
    KEY_LENGTH,
    KEY_PREFIX,
    PREFIX_LENGTH,
    check_api_key,
    hash_api_key,
    is_light_hash,
    is_well_formed,
    new_api_key,
    prefix_of,
    stored_reference,
)
from dispatch.security.passwords import hash_password
from dispatch.storage import ApiKeyStore, SqliteDatabase

BASE = 1_800_000_000.0


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


def test_a_key_hash_is_light_and_checks_only_its_key() -> None:
    key = new_api_key()
    stored = hash_api_key(key)
    assert stored.startswith("$argon2id$")
    assert is_light_hash(stored)
    assert check_api_key(stored, key)
    assert not check_api_key(stored, new_api_key())
    assert not check_api_key("not a hash", key)
    assert not is_light_hash(hash_password("a password profile hash"))


def test_a_full_key_is_referred_to_by_its_prefix() -> None:
    key = new_api_key()
    assert stored_reference(key) == prefix_of(key)
    assert stored_reference(f"  {key}\n") == prefix_of(key)
    assert stored_reference(prefix_of(key)) == prefix_of(key)
    assert stored_reference("12") == "12"
    assert stored_reference(12) == 12


async def test_create_returns_the_key_once_and_stores_only_its_hash(
    keys: ApiKeyStore, db: Path
) -> None:
    record, key = await create_api_key(keys, "  billing app  ", now=BASE)
    assert is_well_formed(key)
    assert record.name == "billing app"
    assert record.prefix == prefix_of(key)
    assert record.created_at == BASE
    assert record.revoked_at is None
    assert record.last_used_at is None
    assert key not in repr(record)
    found = await keys.find_by_prefix(prefix_of(key))
    assert found is not None
    assert found.key_hash is not None
    assert found.key_hash.startswith("$argon2id$")
    assert check_api_key(found.key_hash, key)
    on_disk = files_bytes(db.parent)
    assert record.prefix.encode() in on_disk  # the row is there ...
    assert key.encode() not in on_disk  # ... but neither the key
    assert key[PREFIX_LENGTH:].encode() not in on_disk  # nor its secret part


@pytest.mark.parametrize("name", ["", "   ", "tab\there", "x" * 101])
async def test_a_bad_name_is_refused(keys: ApiKeyStore, name: str) -> None:
    with pytest.raises(ValueError, match="API key name"):
        await create_api_key(keys, name)


async def test_a_taken_prefix_is_generated_again(
    keys: ApiKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing, existing_key = await create_api_key(keys, "first")
    clash = existing_key[:PREFIX_LENGTH] + new_api_key()[PREFIX_LENGTH:]
    fresh = new_api_key()
    planned: Iterator[str] = iter([clash, fresh])
    monkeypatch.setattr(api_keys_module, "new_api_key", lambda: next(planned))
    record, key = await create_api_key(keys, "second")
    assert key == fresh
    assert record.prefix == prefix_of(fresh) != existing.prefix
    assert len(await keys.list()) == 2
