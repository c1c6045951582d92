"""The in-memory index: counts per state and a due-queue that never lists directories."""

from __future__ import annotations

import attrs

from dispatch.spool import Envelope, MessageState, SpoolEntry, new_id
from dispatch.spool.index import SpoolIndex

INCOMING, PROCESSING, FAILED = (
    MessageState.INCOMING,
    MessageState.PROCESSING,
    MessageState.FAILED,
)


def envelope(due: float, *, attempts: int = 0, size: int = 10) -> Envelope:
    return Envelope(
        id=new_id(),
        mail_from="a@x.test",
        recipients=("b@x.test",),
        source="smtp",
        peer_ip=None,
        auth_identity=None,
        tags=(),
        received_at=0.0,
        size=size,
        attempts=attempts,
        next_attempt_at=due,
    )


def test_counts_follow_puts_and_discards() -> None:
    index = SpoolIndex()
    fresh, retry, claimed, failed = envelope(1), envelope(2, attempts=2), envelope(3), envelope(4)
    index.load([SpoolEntry(INCOMING, fresh), SpoolEntry(INCOMING, retry)])
    index.put(SpoolEntry(PROCESSING, claimed))
    index.put(SpoolEntry(FAILED, failed))
    counts = index.counts()
    assert (counts.incoming, counts.retrying, counts.processing, counts.failed) == (2, 1, 1, 1)
    assert (counts.total, counts.total_bytes) == (4, 40)

    index.put(SpoolEntry(PROCESSING, retry))  # claimed: leaves incoming and retrying
    index.discard(claimed.id)
    counts = index.counts()
    assert (counts.incoming, counts.retrying, counts.processing, counts.failed) == (1, 0, 1, 1)
    assert {e.id for e in index.entries(PROCESSING)} == {retry.id}
    assert index.discard("spl_00000000000000000000000000") is None


def test_pop_due_returns_earliest_first_and_nothing_early() -> None:
    index = SpoolIndex()
    late, early, middle = envelope(30), envelope(10), envelope(20)
    index.load([SpoolEntry(INCOMING, e) for e in (late, early, middle)])
    assert index.next_due_time() == 10
    assert index.pop_due(now=9.9, limit=10) == []
    assert [e.id for e in index.pop_due(now=25, limit=10)] == [early.id, middle.id]
    assert index.next_due_time() == 30
    assert index.pop_due(now=100, limit=0) == []
    assert [e.id for e in index.pop_due(now=100, limit=5)] == [late.id]
    assert index.next_due_time() is None
    # Popped entries stay incoming until claimed; requeue puts them back.
    assert index.counts().incoming == 3
    index.requeue(SpoolEntry(INCOMING, early))
    assert [e.id for e in index.pop_due(now=100, limit=5)] == [early.id]


def test_equal_times_come_out_in_arrival_order() -> None:
    index = SpoolIndex()
    made = [envelope(5) for _ in range(50)]
    for e in reversed(made):
        index.put(SpoolEntry(INCOMING, e))
    assert [e.id for e in index.pop_due(now=5, limit=100)] == [e.id for e in made]


def test_rescheduled_and_removed_entries_leave_no_trace_in_the_queue() -> None:
    index = SpoolIndex()
    first, second = envelope(1), envelope(2)
    index.put(SpoolEntry(INCOMING, first))
    index.put(SpoolEntry(INCOMING, second))
    index.put(SpoolEntry(INCOMING, attrs.evolve(first, next_attempt_at=50)))
    index.discard(second.id)
    assert index.next_due_time() == 50
    assert [e.envelope.next_attempt_at for e in index.pop_due(now=100, limit=10)] == [50]


def test_stale_heap_items_are_compacted() -> None:
    index = SpoolIndex()
    made = [envelope(i) for i in range(5000)]
    for e in made:
        index.put(SpoolEntry(INCOMING, e))
    for e in made[:4900]:
        index.put(SpoolEntry(PROCESSING, e))
    assert len(index._due_heap) <= 2 * 100 + 1024 + 1
    assert [e.id for e in index.pop_due(now=1e9, limit=1000)] == [e.id for e in made[4900:]]
