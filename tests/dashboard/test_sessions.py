"""Dashboard sessions in a real SQLite database: tokens stored hashed, idle and absolute expiry,
the admin password set once on first run and ending every session when changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatch.dashboard.auth import (
    ABSOLUTE_SECONDS,
    IDLE_SECONDS,
    Sessions,
    password_problem,
    token_hash,
)
from dispatch.dashboard.gate import is_background
from dispatch.storage import SqliteDatabase
from dispatch.storage.admin import AdminStore
from tests.storage.conftest import query

T0 = 1_800_000_000.0
HOUR = 3600.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "dispatch.db"


@pytest.fixture
async def admin(db: Path) -> AsyncIterator[AdminStore]:
    database = SqliteDatabase(db)
    yield AdminStore(database)
    await database.aclose()


async def test_the_database_keeps_the_tokens_hash_never_the_token(
    admin: AdminStore, db: Path
) -> None:
    token, _ = await Sessions(admin).begin(now=T0)
    stored = query(db, "SELECT token_hash FROM sessions")
    assert stored == [(token_hash(token),)]
    assert token not in repr(stored)


async def test_a_session_used_within_the_idle_limit_lives_on(admin: AdminStore) -> None:
    sessions = Sessions(admin)
    token, _ = await sessions.begin(now=T0)
    for hour in range(1, 100, 11):  # a request every 11 hours: never 12 h idle
        assert await sessions.find(token, now=T0 + hour * HOUR) is not None


async def test_a_pages_own_live_updates_do_not_keep_its_session_alive(admin: AdminStore) -> None:
    sessions = Sessions(admin)
    token, _ = await sessions.begin(now=T0)
    for minute in range(1, 13 * 60, 25):  # an Overview left open: an update every 25 minutes
        await sessions.find(token, now=T0 + minute * 60, extend=False)
    assert await sessions.find(token, now=T0 + IDLE_SECONDS + 1) is None


def test_a_live_update_is_told_from_the_operators_requests() -> None:
    assert is_background(None, "text/event-stream")
    assert is_background("1", "text/html")
    assert not is_background(None, "text/html,application/xhtml+xml")
    assert not is_background(None, None)


async def test_a_session_idle_for_twelve_hours_has_ended(admin: AdminStore) -> None:
    sessions = Sessions(admin)
    token, _ = await sessions.begin(now=T0)
    assert await sessions.find(token, now=T0 + 6 * HOUR) is not None
    assert await sessions.find(token, now=T0 + 6 * HOUR + IDLE_SECONDS + 1) is None


async def test_no_session_outlives_seven_days_however_often_used(admin: AdminStore) -> None:
    sessions = Sessions(admin)
    token, _ = await sessions.begin(now=T0)
    at = T0
    while at + HOUR < T0 + ABSOLUTE_SECONDS:
        at += HOUR
        assert await sessions.find(token, now=at) is not None
    assert await sessions.find(token, now=T0 + ABSOLUTE_SECONDS + 1) is None


async def test_logout_ends_only_that_session(admin: AdminStore) -> None:
    sessions = Sessions(admin)
    first, _ = await sessions.begin(now=T0)
    second, _ = await sessions.begin(now=T0)
    assert await sessions.end(first)
    assert await sessions.find(first, now=T0 + 1) is None
    assert await sessions.find(second, now=T0 + 1) is not None


async def test_an_unknown_or_empty_token_finds_nothing(admin: AdminStore) -> None:
    sessions = Sessions(admin)
    await sessions.begin(now=T0)
    assert await sessions.find("not-a-token", now=T0 + 1) is None
    assert await sessions.find("", now=T0 + 1) is None
    assert await sessions.find(None, now=T0 + 1) is None


async def test_first_run_sets_the_password_once_only(admin: AdminStore) -> None:
    assert await admin.password_hash() is None
    assert await admin.set_password_hash("$argon2id$first", only_if_unset=True)
    assert not await admin.set_password_hash("$argon2id$second", only_if_unset=True)
    assert await admin.password_hash() == "$argon2id$first"


async def test_changing_the_password_ends_every_session(admin: AdminStore) -> None:
    sessions = Sessions(admin)
    await admin.set_password_hash("$argon2id$first", only_if_unset=True)
    token, _ = await sessions.begin()
    assert await admin.set_password_hash("$argon2id$second")
    assert await sessions.find(token) is None
    assert await admin.password_hash() == "$argon2id$second"


def test_password_rules() -> None:
    assert password_problem("twelve chars") is None
    assert "has 11 characters; use at least 12" in str(password_problem("eleven char"))
    assert "differ" in str(password_problem("twelve chars", "twelve charz"))
    assert "longer than 1024" in str(password_problem("x" * 1025))
