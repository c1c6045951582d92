"""The dashboard's admin password and sessions (:class:`AdminStore`) on SQLite and PostgreSQL:
nodes sharing one PostgreSQL database share them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dispatch.storage.admin import AdminStore, SessionRow
from tests.storage.conftest import BASE, DbRef, database_for


@pytest.fixture
async def admin(db: DbRef) -> AsyncIterator[AdminStore]:
    database = database_for(db)
    yield AdminStore(database)
    await database.aclose()


def session(token: str, *, at: float = BASE, hours: float = 12) -> SessionRow:
    return SessionRow(
        token_hash=token, created_at=at, expires_at=at + hours * 3600, csrf_token=f"csrf-{token}"
    )


async def test_the_first_password_wins_and_a_change_ends_every_session(admin: AdminStore) -> None:
    assert await admin.password_hash() is None
    assert await admin.set_password_hash("$argon2id$first", only_if_unset=True, now=BASE)
    assert not await admin.set_password_hash("$argon2id$second", only_if_unset=True, now=BASE)
    assert await admin.password_hash() == "$argon2id$first"
    await admin.create_session(session("a"))
    await admin.create_session(session("b"))
    assert await admin.count_sessions(now=BASE + 1) == 2
    assert await admin.set_password_hash("$argon2id$changed", now=BASE + 2)
    assert await admin.password_hash() == "$argon2id$changed"
    assert await admin.count_sessions(now=BASE + 3) == 0


async def test_sessions_are_found_extended_ended_and_expire(admin: AdminStore) -> None:
    await admin.create_session(session("short", hours=1))
    await admin.create_session(session("long"))
    found = await admin.find_session("long", now=BASE + 60)
    assert found == session("long")
    await admin.extend_session("short", BASE + 7200)
    await admin.extend_session("short", BASE + 10)  # never backwards
    assert await admin.find_session("short", now=BASE + 5000) is not None
    assert await admin.find_session("short", now=BASE + 7200) is None  # expired
    assert await admin.end_session("long")
    assert not await admin.end_session("long")
    assert await admin.find_session("long", now=BASE + 60) is None
    # A new session clears the expired ones in the same transaction.
    await admin.create_session(session("later", at=BASE + 8000))
    assert await admin.count_sessions(now=BASE) == 1
