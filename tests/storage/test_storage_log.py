"""Recording events and reading them back: rows, counters, history, search, audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from dispatch.lifecycle import Component
from dispatch.storage import (
    AuditEntry,
    Database,
    LogQueries,
    MessageEvent,
    SqlCursor,
    SqliteDatabase,
    Store,
    open_store,
)
from dispatch.storage.log_writer import LINGER
from dispatch.storage.records import MAX_FREE_TEXT, from_journal, to_journal
from dispatch.storage.throughput import counts_last_minutes
from tests.storage.conftest import (
    BASE,
    DAY,
    DbRef,
    make_store,
    query,
    received,
    row_count,
    running,
    url_for,
)

FULL = MessageEvent(
    message_id="spl_01JD0000000000000000000000",
    event="delivered",
    at=BASE + 1.25,
    source="api",
    peer_ip="192.0.2.7",
    sender="billing@example.test",
    recipients=("a@example.test", "B@Example.test"),
    subject="Invoice 42",
    size=5120,
    tags=("invoice", "eu"),
    relay="smarthost",
    route="default",
    attempt=2,
    duration_ms=183.5,
    response="250 2.0.0 Ok: queued as 4Xyz",
    remote_id="4Xyz",
    api_key_prefix="dk_live_ab12",
)


@pytest.fixture
def store(db: DbRef, tmp_path: Path) -> Store:
    return make_store(db, tmp_path / "data")


async def write(store: Store, *records: MessageEvent | AuditEntry) -> None:
    for record in records:
        if isinstance(record, MessageEvent):
            store.log.record(record)
        else:
            store.log.audit(record)
    with trio.fail_after(10):
        await store.log.wait_until_written()


async def test_recorded_events_become_rows_with_every_field(store: Store, db: DbRef) -> None:
    minimal = MessageEvent(message_id=None, event="denied", at=BASE, peer_ip="198.51.100.9")
    async with running(store):
        await write(store, FULL, minimal)
        assert store.log.database_reachable
        assert store.log.last_error is None
        assert store.log.pending == 0
        assert store.log.written_total == 2
        assert store.log.journaled_total == 0
        history = await store.queries.message_history(FULL.message_id or "")
    assert history == [FULL]
    assert history[0].row_id is not None
    raw = query(
        db,
        "SELECT recipients, tags, at, duration_ms FROM message_log WHERE event_id = ?",
        (FULL.event_id,),
    )
    assert raw == [
        ('["a@example.test", "B@Example.test"]', '["invoice", "eu"]', BASE + 1.25, 183.5)
    ]
    assert query(
        db, "SELECT message_id, event, peer_ip FROM message_log WHERE event = 'denied'"
    ) == [(None, "denied", "198.51.100.9")]
    assert not store.log.journal_path.exists()


async def test_counts_today_and_per_relay(store: Store) -> None:
    events = [
        *(received(i, at=BASE + i) for i in range(3)),
        received(9, at=BASE - DAY),  # yesterday
        MessageEvent(message_id="msg-0", event="delivered", at=BASE + 5, relay="smarthost"),
        MessageEvent(message_id="msg-1", event="delivered", at=BASE + 6, relay="smarthost"),
        MessageEvent(message_id="msg-2", event="retried", at=BASE + 7, relay="smarthost"),
        MessageEvent(message_id="msg-2", event="failed", at=BASE + 8, relay="provider"),
        MessageEvent(message_id=None, event="denied", at=BASE + 9),
        MessageEvent(message_id="msg-9", event="delivered", at=BASE - DAY, relay="provider"),
    ]
    async with running(store):
        await write(store, *events)
        today = await store.queries.counts_today(now=BASE + 3600)
        yesterday = await store.queries.counts_today(now=BASE - DAY)
        relays = await store.queries.relay_counts_today(now=BASE)
        tomorrow = await store.queries.relay_counts_today(now=BASE + DAY)
    assert today == {"received": 3, "delivered": 2, "retried": 1, "failed": 1, "denied": 1}
    assert yesterday == {"received": 1, "delivered": 1, "retried": 0, "failed": 0, "denied": 0}
    assert relays == {
        "smarthost": {"delivered": 2, "failed": 0},
        "provider": {"delivered": 0, "failed": 1},
    }
    assert tomorrow == {}


async def test_counts_last_5_minutes(store: Store) -> None:
    events = [
        received(1, at=BASE + 30),  # this minute
        received(2, at=BASE - 4 * 60),  # four minutes back: the oldest bucket counted
        received(3, at=BASE - 5 * 60),  # five minutes back: out
        MessageEvent(message_id="msg-1", event="delivered", at=BASE + 40, relay="r"),
        MessageEvent(message_id="msg-2", event="failed", at=BASE + 40, relay="r"),
    ]
    async with running(store):
        await write(store, *events)
        assert await store.queries.counts_last_5_minutes(now=BASE + 45) == {
            "received": 2,
            "sent": 1,
        }
        assert await store.queries.counts_last_5_minutes(now=BASE + 3600) == {
            "received": 0,
            "sent": 0,
        }


async def test_history_is_in_time_order_and_latest_status_is_the_newest(store: Store) -> None:
    first = received(7, at=BASE)
    retried = MessageEvent(message_id="msg-7", event="retried", at=BASE + 60, attempt=1)
    tie_a = MessageEvent(message_id="msg-7", event="retried", at=BASE + 120, attempt=2)
    tie_b = MessageEvent(message_id="msg-7", event="delivered", at=BASE + 120, attempt=3)
    other = received(8, at=BASE + 30)
    async with running(store):
        # Written out of time order, as a replayed journal would.
        await write(store, retried, other)
        await write(store, tie_a, tie_b, first)
        history = await store.queries.message_history("msg-7")
        latest = await store.queries.latest_status("msg-7")
        assert await store.queries.message_history("nope") == []
        assert await store.queries.latest_status("nope") is None
    assert history == [first, retried, tie_a, tie_b]  # same time: the order they were written
    assert latest == tie_b
    assert latest is not None
    assert latest.event == "delivered"


async def test_search(store: Store) -> None:
    alice = received(1, at=BASE, sender="Alice@Example.test", subject="Quarterly 100% report")
    bob = received(2, at=BASE + 10, recipients=("bob@example.test",), tags=("Newsletter",))
    both = received(3, at=BASE + 20, recipients=("alice@example.test", "bob@example.test"))
    delivered = MessageEvent(
        message_id="msg-2", event="delivered", at=BASE + 30, recipients=("bob@example.test",)
    )
    underscore = received(4, at=BASE + 40, subject="a_b", tags=("news",))
    async with running(store):
        await write(store, alice, bob, both, delivered, underscore)
        search = store.queries.search
        assert await search(address="ALICE@example.test") == [both, alice]
        assert await search(address="bob@example.test") == [delivered, both, bob]
        assert await search(address="bob@example.test", status="received") == [both, bob]
        assert await search(status="delivered") == [delivered]
        assert await search(since=BASE + 10, until=BASE + 30) == [both, bob]
        assert await search(address="bob@example.test", since=BASE + 15) == [delivered, both]
        assert await search(tag="newsletter") == [bob]
        assert await search(tag="news") == [underscore]  # a whole tag, not a prefix
        assert await search(subject="100%") == [alice]
        assert await search(subject="a_") == [underscore]  # LIKE wildcards are literal
        assert await search(subject="QUARTERLY") == [alice]
        assert await search(limit=2) == [underscore, delivered]
        assert await search(address="nobody@example.test") == []


async def test_audit_entries_go_through_the_same_writer(store: Store) -> None:
    old = AuditEntry(category="Auth", level="Warning", message="login failed", at=BASE)
    new = AuditEntry(
        category="ApiKey", level="Notice", message="key created", actor="admin", at=BASE + 5
    )
    async with running(store):
        await write(store, old, received(1), new)
        assert await store.queries.audit_entries() == [new, old]
        assert await store.queries.audit_entries(category="Auth") == [old]
        assert await store.queries.audit_entries(since=BASE + 1) == [new]
    assert store.log.written_total == 3


async def test_stop_writes_everything_queued(store: Store, db: DbRef) -> None:
    assert Component(name="storage", run=store.run)  # what the daemon will run
    early = [received(i) for i in range(100)]
    for event in early:  # recorded before the writer even runs
        store.log.record(event)
    assert store.log.pending == 100
    async with running(store):
        for i in range(100, 2100):
            store.log.record(received(i))
        # The context manager requests the stop at once: the queue must still be written.
    assert store.log.pending == 0
    assert row_count(db) == 2100
    assert not store.log.journal_path.exists()


async def test_unstorable_text_is_made_storable(store: Store) -> None:
    # An SMTP peer's bytes that were not UTF-8 arrive as lone surrogates; SQLite refuses them.
    event = received(1, sender="caf\udce9@example.test", subject="x" * (MAX_FREE_TEXT + 500))
    assert event.sender == "caf\\udce9@example.test"
    assert event.subject == "x" * MAX_FREE_TEXT
    async with running(store):
        await write(store, event)
        assert await store.queries.message_history("msg-1") == [event]


def test_records_validate_and_round_trip_through_the_journal() -> None:
    with pytest.raises(ValueError, match="event"):
        MessageEvent(message_id="m", event="bounced")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="category"):
        AuditEntry(category="Nope", level="Info", message="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="string"):
        MessageEvent(message_id="m", event="received", recipients="a@example.test")
    entry = AuditEntry(category="System", level="Info", message="started")
    for record in (FULL, entry):
        line = to_journal(record)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert from_journal(line) == record
    document = json.loads(to_journal(FULL))
    assert document["type"] == "message"
    assert document["event_id"] == FULL.event_id
    assert document["recipients"] == ["a@example.test", "B@Example.test"]
    assert attrs.evolve(FULL, row_id=5) == FULL  # the row id is not part of the record


class PlanRecorder:
    """A :class:`Database` that asks SQLite for the plan of every statement read runs."""

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database
        self.plans: dict[str, list[str]] = {}

    @property
    def description(self) -> str:
        return self.database.description

    async def write[T](self, work: Callable[[SqlCursor], T]) -> T:
        return await self.database.write(work)

    async def read[T](self, work: Callable[[SqlCursor], T]) -> T:
        plans = self.plans

        class Explaining:
            def __init__(self, cursor: SqlCursor) -> None:
                self.cursor = cursor

            def execute(self, sql: str, parameters: Any = (), /) -> object:
                self.cursor.execute("EXPLAIN QUERY PLAN " + sql, parameters)
                plans[sql] = [row[3] for row in self.cursor.fetchall()]
                return self.cursor.execute(sql, parameters)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.cursor, name)

        return await self.database.read(lambda cursor: work(Explaining(cursor)))

    async def aclose(self) -> None:
        await self.database.aclose()


async def test_every_query_reads_an_index_range(tmp_path: Path) -> None:
    store = make_store(tmp_path / "plans.db", tmp_path / "data")  # SQLite's plans
    async with running(store):
        await write(store, *(received(i, at=BASE + i) for i in range(50)))
    assert isinstance(store.database, SqliteDatabase)
    recorder = PlanRecorder(store.database)
    checked: Database = recorder
    queries = LogQueries(checked)
    await queries.counts_today()
    await queries.counts_last_5_minutes()
    await queries.relay_counts_today()
    await queries.message_history("msg-1")
    await queries.latest_status("msg-1")
    await queries.search(address="app@example.test", status="received", since=BASE)
    await queries.search(status="failed", until=BASE)
    await queries.search(since=BASE, until=BASE + 10)
    await queries.search(subject="x", tag="y")
    await queries.audit_entries(category="Auth")
    await store.database.aclose()
    assert len(recorder.plans) == 10
    for sql, plan in recorder.plans.items():
        first = plan[0]
        assert first.startswith("SEARCH") or " USING INDEX " in first, (sql, plan)
        assert not any("FOR ORDER BY" in step for step in plan), (sql, plan)


async def test_each_node_counts_its_own_traffic_in_one_database(db: DbRef, tmp_path: Path) -> None:
    one = open_store(url_for(db), tmp_path / "one", node_id="node-1")
    two = open_store(url_for(db), tmp_path / "two", node_id="node-2")
    async with running(one), running(two):
        await write(one, *(received(i, at=BASE + i) for i in range(3)))
        await write(
            two,
            received(10, at=BASE),
            MessageEvent(message_id="msg-10", event="delivered", at=BASE + 1, relay="smarthost"),
        )
        first = await one.queries.counts_today(now=BASE + 60)
        second = await two.queries.counts_today(now=BASE + 60)
        recent = await two.queries.counts_last_5_minutes(now=BASE + 60)
        relays = (
            (await one.queries.relay_counts_today(now=BASE)),
            (await two.queries.relay_counts_today(now=BASE)),
        )
        everyone = LogQueries(one.database)
        total = await everyone.counts_today(now=BASE + 60)
        chart = await counts_last_minutes(one.database, now=BASE + 60)
    assert (first["received"], first["delivered"]) == (3, 0)
    assert (second["received"], second["delivered"]) == (1, 1)
    assert recent == {"received": 1, "sent": 1}
    assert relays == ({}, {"smarthost": {"delivered": 1, "failed": 0}})
    assert (total["received"], total["delivered"]) == (4, 1)
    assert (chart["received"], chart["delivered"]) == (4, 1)  # the dashboard chart: all nodes
    nodes = {row[0] for row in query(db, "SELECT DISTINCT node FROM message_log")}
    assert nodes == {"node-1", "node-2"}


class CountingDatabase(SqliteDatabase):
    """A real SQLite database that counts its write transactions."""

    transactions = 0

    async def write[T](self, work: Callable[[SqlCursor], T]) -> T:
        self.transactions += 1
        return await super().write(work)


async def test_records_arriving_steadily_share_transactions(tmp_path: Path) -> None:
    database = CountingDatabase(tmp_path / "log.db")
    store = Store.for_database(database, tmp_path)
    async with running(store):
        await write(store, received(0))  # one record after a quiet spell goes in on its own
        before = database.transactions
        began = trio.current_time()
        for burst in range(20):  # sustained traffic: bursts of LINGER_FROM records or more
            for number in range(10):
                store.log.record(received(1 + burst * 10 + number))
            await trio.sleep(0.005)
        with trio.fail_after(10):
            await store.log.wait_until_written()
        elapsed = trio.current_time() - began
        transactions = database.transactions - before
        assert len(await store.queries.message_history("msg-200")) == 1
    assert store.log.written_total == 201
    # Each write of LINGER_FROM rows or more waits LINGER for more, whatever the machine's
    # speed; without the wait each burst would go in on its own (20 transactions).
    assert transactions <= elapsed / LINGER + 2, (transactions, elapsed)
