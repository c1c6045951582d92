"""Retention's purge: old rows of the kinds asked for go, everything else stays."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dispatch.storage import AUDIT, AuditEntry, MessageEvent
from dispatch.storage.purge import PURGE_CHUNK
from tests.storage.conftest import BASE, DAY, DbRef, make_store, query, received, running

WEEK = 7 * DAY


def kinds_left(db: DbRef) -> list[tuple[str, str]]:
    rows = query(db, "SELECT message_id, event FROM message_log ORDER BY message_id, at")
    return [(message_id, event) for message_id, event in rows]


async def test_purge_removes_only_old_rows_of_the_kinds_asked(db: DbRef, tmp_path: Path) -> None:
    store = make_store(db, tmp_path)
    now = BASE
    old, recent = now - WEEK - 60, now - WEEK + 60
    records: list[MessageEvent | AuditEntry] = [
        received(1, at=old, recipients=("old@example.test",)),
        MessageEvent(message_id="msg-1", event="delivered", at=old, relay="r"),
        received(2, at=old),
        MessageEvent(message_id="msg-2", event="failed", at=old, relay="r"),
        received(3, at=recent, recipients=("new@example.test",)),
        MessageEvent(message_id="msg-3", event="delivered", at=recent, relay="r"),
        AuditEntry(category="Auth", level="Info", message="old login", at=old),
        AuditEntry(category="Auth", level="Info", message="new login", at=recent),
        received(4, at=now - 26 * 3600),  # its minute counter is past the 25 hours kept
    ]
    async with running(store):
        for record in records:
            if isinstance(record, MessageEvent):
                store.log.record(record)
            else:
                store.log.audit(record)
        await store.log.wait_until_written()
        today_before = await store.queries.counts_today(now=old)
        deleted = await store.purge(
            {"delivered": WEEK, "failed": WEEK, "received": 0, AUDIT: WEEK}, now=now
        )
        assert deleted == {"delivered": 1, "failed": 1, AUDIT: 1, "minute_counters": 6}
        assert await store.queries.search(address="old@example.test") == [records[0]]
        assert await store.queries.counts_today(now=old) == today_before  # daily history stays
        assert [e.message for e in await store.queries.audit_entries()] == ["new login"]
        # A second purge finds nothing more to do.
        again = await store.purge({"delivered": WEEK, "failed": WEEK, AUDIT: WEEK}, now=now)
        assert again == {"delivered": 0, "failed": 0, AUDIT: 0, "minute_counters": 0}
    assert kinds_left(db) == [
        ("msg-1", "received"),  # "received" was not asked for (0 keeps forever)
        ("msg-2", "received"),
        ("msg-3", "received"),
        ("msg-3", "delivered"),
        ("msg-4", "received"),
    ]
    assert query(db, "SELECT DISTINCT address FROM message_log_addresses ORDER BY address") == [
        ("app@example.test",),
        ("new@example.test",),
        ("old@example.test",),
        ("rcpt@example.test",),
    ]
    assert query(db, "SELECT COUNT(*) FROM message_log_addresses") == [(8,)]


async def test_purge_goes_in_chunks_until_done(db: DbRef, tmp_path: Path) -> None:
    store = make_store(db, tmp_path)
    total = 2 * PURGE_CHUNK + 7
    async with running(store):
        for i in range(total):
            store.log.record(received(i, at=BASE - WEEK - 1 - i))
        store.log.record(received(total, at=BASE))
        await store.log.wait_until_written()
        with trio.fail_after(10):
            deleted = await store.purge({"received": WEEK}, now=BASE)
    assert deleted["received"] == total
    assert query(db, "SELECT message_id FROM message_log") == [(f"msg-{total}",)]
    assert query(db, "SELECT COUNT(*) FROM message_log_addresses") == [(2,)]


async def test_purge_refuses_unknown_kinds(db: DbRef, tmp_path: Path) -> None:
    store = make_store(db, tmp_path)
    with pytest.raises(ValueError, match="cannot purge \\['bounced'\\]"):
        await store.purge({"bounced": 1.0})
