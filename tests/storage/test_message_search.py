"""The Message log's searches and the Overview's per-minute figures on SQLite and PostgreSQL:
every filter, the outcomes as events, keyset pages both ways, denied rows, subjects, and the
24-hour throughput buckets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from dispatch.storage import Database, MessageEvent, Store
from dispatch.storage.message_search import (
    Cursor,
    MessageFilter,
    denied_page,
    latest_received,
    search_messages,
    subjects_of,
)
from dispatch.storage.throughput import counts_last_minutes, throughput
from tests.storage.conftest import BASE, DbRef, make_store, received, running


def final(
    number: int, event: str, *, at: float, relay: str = "primary", **fields: object
) -> MessageEvent:
    return MessageEvent(
        message_id=f"msg-{number}",
        event=event,  # type: ignore[arg-type]
        at=at,
        sender="app@example.test",
        recipients=("rcpt@example.test",),
        relay=relay,
        route="default",
        attempt=1,
        response="250 ok" if event == "delivered" else "451 later",
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
def store(db: DbRef, tmp_path: Path) -> Store:
    return make_store(db, tmp_path / "data")


@asynccontextmanager
async def written(store: Store, events: list[MessageEvent]) -> AsyncIterator[Database]:
    """The store running with ``events`` written; its database to read."""
    async with running(store):
        for event in events:
            store.log.record(event)
        await store.log.wait_until_written()
        yield store.database


def names(rows: object) -> list[str]:
    return [row.received.message_id for row in rows]  # type: ignore[attr-defined]


async def test_each_filter_and_the_outcomes(store: Store) -> None:
    events = [
        received(1, at=BASE, subject="Invoice 1", recipients=("Ann@Example.org",)),
        final(1, "delivered", at=BASE + 1),
        received(
            2,
            at=BASE + 10,
            subject="Invoice 2",
            tags=("billing",),
            source="api",
            api_key_prefix="dsp_live_aaaaaaaa",
        ),
        final(2, "retried", at=BASE + 11, relay="backup"),
        final(2, "failed", at=BASE + 12, relay="backup"),
        received(3, at=BASE + 20, subject="Weekly", sender="ops@example.net"),
        final(3, "retried", at=BASE + 21),
        received(4, at=BASE + 30, subject="Partly"),
        final(4, "delivered", at=BASE + 31),
        final(4, "failed", at=BASE + 31),
    ]
    async with written(store, events) as db:

        async def find(**wanted: object) -> list[str]:
            page = await search_messages(db, MessageFilter(**wanted))  # type: ignore[arg-type]
            return names(page.rows)

        assert await find() == ["msg-4", "msg-3", "msg-2", "msg-1"]
        assert await find(address="ann@example.org") == ["msg-1"]  # the index lower-cases
        assert await find(address="ops@example.net") == ["msg-3"]
        assert await find(address="@example.org") == ["msg-1"]
        assert await find(subject="INVOICE") == ["msg-2", "msg-1"]
        assert await find(subject="50%") == []  # LIKE's wildcards are escaped
        assert await find(tag="billing") == ["msg-2"]
        assert await find(source="api") == ["msg-2"]
        assert await find(api_key="dsp_live_aaaaaaaa") == ["msg-2"]
        assert await find(relay="backup") == ["msg-2"]
        assert await find(relay="primary") == ["msg-4", "msg-3", "msg-1"]
        assert await find(since=BASE + 10, until=BASE + 30) == ["msg-3", "msg-2"]
        # Outcomes are events: msg-4 was delivered to one recipient and failed for another.
        assert await find(outcome="delivered") == ["msg-4", "msg-1"]
        assert await find(outcome="failed") == ["msg-4", "msg-2"]
        assert await find(outcome="deferred") == ["msg-3", "msg-2"]
        assert await find(outcome="open") == ["msg-3"]
        latest = {row.received.message_id: row.latest for row in await latest_received(db, 10)}
        assert latest == {"msg-1": "delivered", "msg-2": "failed", "msg-3": "retried",
                          "msg-4": "failed"}  # fmt: skip
        assert await subjects_of(db, ["msg-1", "msg-3", "msg-9"]) == {
            "msg-1": "Invoice 1",
            "msg-3": "Weekly",
        }


async def test_keyset_pages_walk_every_row_once_both_ways(store: Store) -> None:
    # Seven messages, two of them at the very same time (the id breaks the tie).
    times = [BASE, BASE + 1, BASE + 2, BASE + 2, BASE + 3, BASE + 4, BASE + 5]
    async with written(store, [received(n, at=at) for n, at in enumerate(times)]) as db:
        pages = []
        page = await search_messages(db, MessageFilter(), limit=3)
        assert page.newer is None
        pages.append(names(page.rows))
        while page.older is not None:
            page = await search_messages(db, MessageFilter(), before=page.older, limit=3)
            pages.append(names(page.rows))
        assert pages == [["msg-6", "msg-5", "msg-4"], ["msg-3", "msg-2", "msg-1"], ["msg-0"]]
        # Back from the last page: each newer page is the one before it.
        assert page.newer is not None
        back = await search_messages(db, MessageFilter(), after=page.newer, limit=3)
        assert names(back.rows) == ["msg-3", "msg-2", "msg-1"]
        assert back.newer is not None
        first = await search_messages(db, MessageFilter(), after=back.newer, limit=3)
        assert names(first.rows) == ["msg-6", "msg-5", "msg-4"]
        assert first.newer is None
        cursor = Cursor(BASE + 0.1, 42)
        assert Cursor.parse(cursor.text()) == cursor
        with pytest.raises(ValueError, match="not a page cursor"):
            Cursor.parse("nonsense")


async def test_denied_rows_are_listed_apart(store: Store) -> None:
    async with written(
        store,
        [
            received(1, at=BASE),
            MessageEvent(message_id=None, event="denied", at=BASE + 1, source="smtp",
                         peer_ip="192.0.2.1", response="peer not in listener.allowed_cidrs"),
            MessageEvent(message_id=None, event="denied", at=BASE + 2, source="api",
                         peer_ip="192.0.2.2", response="peer not in api.allowed_cidrs"),
        ],
    ) as db:  # fmt: skip
        assert names((await search_messages(db, MessageFilter())).rows) == ["msg-1"]
        everything = await denied_page(db)
        assert [e.peer_ip for e in everything.rows] == ["192.0.2.2", "192.0.2.1"]
        assert [e.peer_ip for e in (await denied_page(db, source="smtp")).rows] == ["192.0.2.1"]
        assert (await denied_page(db, since=BASE + 3)).rows == ()


async def test_minute_figures_and_the_throughput_buckets(store: Store) -> None:
    now = BASE + 3600  # on a minute, and on a quarter hour
    events = [
        received(1, at=now - 30),
        final(1, "delivered", at=now - 20),
        received(2, at=now - 4 * 60),  # inside the last 5 minutes
        received(3, at=now - 6 * 60),  # outside
        final(3, "failed", at=now - 6 * 60),
        received(4, at=now - 23 * 3600),  # the first hour of the chart
        received(5, at=now - 25 * 3600),  # before it
    ]
    async with written(store, events) as db:
        recent = await counts_last_minutes(db, 5, now=now)
        assert recent["received"] == 2
        assert recent["delivered"] == 1
        assert recent["failed"] == 0
        buckets = await throughput(db, now=now)
        assert len(buckets) == 96
        assert buckets[-1].start == now  # the bucket running now
        assert buckets[0].start == now - 95 * 15 * 60
        assert sum(b.get("received") for b in buckets) == 4  # msg-5 is older than 24 hours
        assert buckets[-1].get("received") == 0
        last_quarter = buckets[-2]  # the quarter hour before now: msg-1, msg-2 and msg-3
        assert (last_quarter.get("received"), last_quarter.get("delivered")) == (3, 1)
        assert last_quarter.get("failed") == 1
        assert buckets[3].get("received") == 1  # 23 hours ago: 23h45m - 23h = 3 quarters in
