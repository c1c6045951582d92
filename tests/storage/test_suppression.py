"""The ``suppressions`` table through :class:`SuppressionList`, on SQLite and PostgreSQL:
add (an upsert that extends), expiry, list, remove, and the in-memory copy ``check`` reads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from dispatch.storage.suppression import SuppressionList
from tests.storage.conftest import BASE, DAY, DbRef, database_for, query

REFRESH = 0.3  # seconds: the daemon's REFRESH_SECONDS, shortened


@pytest.fixture
async def suppressions(db: DbRef) -> AsyncIterator[SuppressionList]:
    database = database_for(db)
    yield SuppressionList(database, refresh_seconds=REFRESH)
    await database.aclose()


async def test_add_stores_a_lower_cased_row_that_expires_after_the_days(
    suppressions: SuppressionList, db: DbRef
) -> None:
    entry = await suppressions.add(
        "Reject@Y.test", "550 5.1.1 no such user", days=30, message_id="spl_1", now=BASE
    )
    assert entry.address == "reject@y.test"
    assert entry.expires_at == BASE + 30 * DAY
    rows = query(db, "SELECT address, reason, message_id, created_at, expires_at FROM suppressions")
    assert [tuple(r) for r in rows] == [
        ("reject@y.test", "550 5.1.1 no such user", "spl_1", BASE, BASE + 30 * DAY)
    ]


async def test_a_new_bounce_replaces_the_entry_and_extends_it(
    suppressions: SuppressionList, db: DbRef
) -> None:
    await suppressions.add("a@y.test", "550 first", days=1, now=BASE)
    await suppressions.add("A@y.test", "550 second", days=1, now=BASE + DAY / 2)
    listed = await suppressions.list(now=BASE + DAY / 2)
    assert [(e.address, e.reason, e.expires_at) for e in listed] == [
        ("a@y.test", "550 second", BASE + 1.5 * DAY)
    ]
    assert len(query(db, "SELECT address FROM suppressions")) == 1


async def test_expired_entries_are_not_listed_nor_checked_and_go_at_the_next_add(
    suppressions: SuppressionList, db: DbRef
) -> None:
    await suppressions.add("old@y.test", "550 gone", days=1, now=BASE)
    assert await suppressions.check("old@y.test", now=BASE + DAY - 1) is not None
    assert await suppressions.check("old@y.test", now=BASE + DAY + 1) is None
    assert await suppressions.list(now=BASE + DAY + 1) == []
    await suppressions.add("new@y.test", "550 gone", days=1, now=BASE + 2 * DAY)
    assert [r[0] for r in query(db, "SELECT address FROM suppressions")] == ["new@y.test"]


async def test_remove_says_whether_there_was_an_entry(suppressions: SuppressionList) -> None:
    await suppressions.add("a@y.test", "550 x", days=1)
    assert await suppressions.remove("A@Y.TEST") is True
    assert await suppressions.remove("a@y.test") is False
    assert await suppressions.check("a@y.test") is None


async def test_check_sees_a_removal_by_another_process_after_the_refresh(
    db: DbRef, suppressions: SuppressionList
) -> None:
    await suppressions.add("a@y.test", "550 x", days=1)
    assert await suppressions.check("a@y.test") is not None
    other = database_for(db)  # the CLI's connection
    try:
        assert await SuppressionList(other).remove("a@y.test")
    finally:
        await other.aclose()
    assert await suppressions.check("a@y.test") is not None  # the copy in hand, for now
    await trio.sleep(REFRESH)
    assert await suppressions.check("a@y.test") is None
