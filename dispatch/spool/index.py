"""The in-memory index of the spool: every message's state and envelope, counts, due-queue.

The spool directory is scanned once at start-up; from then on the index is the answer to
"what is in the spool" — for ``/health``, the metrics, ``/debug/queue``, ``spool list`` and
the delivery scanner — so no request ever lists a directory. Every operation costs O(1) or O(log n)
whatever the spool's size, except :meth:`SpoolIndex.entries`, which walks what it returns.

The due-queue holds the ``incoming`` messages ordered by ``next_attempt_at`` (then by id,
i.e. arrival). It is a heap with lazy deletion: a message that leaves ``incoming`` or gets a
new time leaves its old heap item behind, recognised as stale because ``_due_at`` no longer
maps its id to that time. When stale items outnumber live ones the heap is rebuilt, so its
size stays proportional to the number of incoming messages.

Not thread-safe: only the Trio thread touches it, after each file operation's thread hop has
returned (the disk changes first, the index follows).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

import attrs

from dispatch.spool.envelope import Envelope
from dispatch.spool.layout import MessageState

# Rebuild the heap once stale items exceed live ones by this many; small enough to bound
# memory, large enough that rebuilding (O(n)) is rare.
_COMPACT_SLACK = 1024


@attrs.frozen
class SpoolEntry:
    """A message's state together with its envelope, as the index knows them."""

    state: MessageState
    envelope: Envelope

    @property
    def id(self) -> str:
        return self.envelope.id


@attrs.frozen
class SpoolCounts:
    """Messages per state. ``retrying`` is the part of ``incoming`` that was tried before."""

    incoming: int
    retrying: int
    processing: int
    failed: int
    total_bytes: int  # size of all .eml files in the spool

    @property
    def total(self) -> int:
        return self.incoming + self.processing + self.failed


class SpoolIndex:
    """Messages by id and by state, per-state counts and the due-queue of incoming ones."""

    def __init__(self) -> None:
        self._entries: dict[str, SpoolEntry] = {}
        self._by_state: dict[MessageState, dict[str, SpoolEntry]] = {
            state: {} for state in MessageState
        }
        self._retrying = 0
        self._bytes = 0
        self._due_heap: list[tuple[float, str]] = []
        self._due_at: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._entries

    def load(self, entries: Iterable[SpoolEntry]) -> None:
        """Add many entries at once (start-up); builds the heap in O(n) instead of O(n log n)."""
        for entry in entries:
            self._add(entry, push_due=False)
        self._rebuild_heap()

    def put(self, entry: SpoolEntry) -> None:
        """Insert ``entry``, or replace the entry with the same id (new state or envelope).

        An incoming entry (re)joins the due-queue at its ``next_attempt_at``.
        """
        old = self._entries.get(entry.id)
        if old is not None:
            self._remove(old)
        self._add(entry, push_due=True)

    def requeue(self, entry: SpoolEntry) -> None:
        """Put an incoming entry back on the due-queue if :meth:`pop_due` took it off."""
        if entry.state is MessageState.INCOMING and entry.id not in self._due_at:
            envelope = entry.envelope
            self._due_at[envelope.id] = envelope.next_attempt_at
            heapq.heappush(self._due_heap, (envelope.next_attempt_at, envelope.id))

    def discard(self, message_id: str) -> SpoolEntry | None:
        """Forget a message; return its last entry, or None if it was not indexed."""
        entry = self._entries.get(message_id)
        if entry is not None:
            self._remove(entry)
        return entry

    def get(self, message_id: str) -> SpoolEntry | None:
        return self._entries.get(message_id)

    def entries(self, state: MessageState | None = None) -> Iterator[SpoolEntry]:
        """Iterate over a snapshot of the entries (all, or those in ``state``), in no order.

        The snapshot is taken by this call, so the caller may await between items while the
        spool changes.
        """
        source = self._entries if state is None else self._by_state[state]
        return iter(tuple(source.values()))

    def counts(self) -> SpoolCounts:
        return SpoolCounts(
            incoming=len(self._by_state[MessageState.INCOMING]),
            retrying=self._retrying,
            processing=len(self._by_state[MessageState.PROCESSING]),
            failed=len(self._by_state[MessageState.FAILED]),
            total_bytes=self._bytes,
        )

    def pop_due(self, now: float, limit: int) -> list[SpoolEntry]:
        """Take up to ``limit`` incoming entries due at ``now``, earliest first, off the queue.

        They stay ``incoming`` in the index: the caller is expected to claim them; one that
        is not claimed returns to the queue when it is next :meth:`put`.
        """
        due: list[SpoolEntry] = []
        heap = self._due_heap
        while heap and len(due) < limit:
            at, message_id = heap[0]
            if self._due_at.get(message_id) != at:
                heapq.heappop(heap)  # stale
                continue
            if at > now:
                break
            heapq.heappop(heap)
            del self._due_at[message_id]
            due.append(self._entries[message_id])
        return due

    def next_due_time(self) -> float | None:
        """The earliest ``next_attempt_at`` in the queue, or None if it is empty."""
        heap = self._due_heap
        while heap and self._due_at.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _add(self, entry: SpoolEntry, *, push_due: bool) -> None:
        envelope = entry.envelope
        self._entries[envelope.id] = entry
        self._by_state[entry.state][envelope.id] = entry
        self._bytes += envelope.size
        if entry.state is MessageState.INCOMING:
            if envelope.attempts > 0:
                self._retrying += 1
            self._due_at[envelope.id] = envelope.next_attempt_at
            if push_due:
                heapq.heappush(self._due_heap, (envelope.next_attempt_at, envelope.id))

    def _remove(self, entry: SpoolEntry) -> None:
        envelope = entry.envelope
        del self._entries[envelope.id]
        del self._by_state[entry.state][envelope.id]
        self._bytes -= envelope.size
        if entry.state is MessageState.INCOMING and envelope.attempts > 0:
            self._retrying -= 1
        if self._due_at.pop(envelope.id, None) is not None and (
            len(self._due_heap) > 2 * len(self._due_at) + _COMPACT_SLACK
        ):
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._due_heap = [(at, message_id) for message_id, at in self._due_at.items()]
        heapq.heapify(self._due_heap)
