"""Bounded traces of short- and long-lived work, in the spirit of Go's ``x/net/trace``.

Theory of operation
-------------------
A :class:`Trace` is the timeline of one piece of work (an SMTP session, a delivery, an API
request, a health check): a title, then timestamped events appended with :meth:`Trace.printf`
and :meth:`Trace.error`, then :meth:`Trace.finish`. The :class:`Tracer` lists traces while
they run and keeps some once they have finished, per *family* (the kind of work):

- one ring per latency bucket: a bucket "≥ X s" holds the :data:`RING_SIZE` most recent
  traces that took at least X seconds. As in ``x/net/trace`` the buckets are cumulative, so a
  slow trace also appears in every faster bucket, and "≥ 0 s" holds the most recent of all;
- one errors ring: the :data:`RING_SIZE` most recent traces that called :meth:`Trace.error`.

Everything is bounded whatever the load: a trace keeps its first :data:`HEAD_EVENTS` and last
:data:`TAIL_EVENTS` events (the middle is counted, shown as one "… N more" marker), an event
message is cut at :data:`MAX_MESSAGE_CHARS`, the rings have fixed sizes, and at most
:data:`MAX_ACTIVE_LISTED` running traces per family are listed (later ones still work and are
kept when they finish; they are only missing from the "active" list, which says so).

Traces are plain objects updated on the Trio thread: no I/O, no locks. Event times come from
a monotonic clock (offsets from the trace's start); the start is also stamped with the wall
clock for display.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Final

import attrs
import trio

from dispatch.logs import printable

FAMILIES: Final = ("smtp.session", "delivery", "api.request", "health")
"""The families Dispatch traces; :class:`Tracer` refuses others (a typo is a bug)."""

BUCKETS: Final = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 10.0, 100.0)
"""Lower bounds in seconds of the latency buckets, as ``x/net/trace`` draws them."""

RING_SIZE: Final = 10
"""Finished traces kept per bucket and in the errors ring: enough to see a pattern."""

HEAD_EVENTS: Final = 150
TAIL_EVENTS: Final = 50
"""A trace keeps at most 200 events: the start of a long session explains it, the end shows
how it finished; what happened in between is counted."""

MAX_MESSAGE_CHARS: Final = 300
"""An event longer than this (a hostile command line, a huge reply) is cut: with the event
limit, one trace holds at most about 90 kB however it is fed."""

MAX_ACTIVE_LISTED: Final = 1000
"""Running traces listed per family. Running work is bounded by its own limits (SMTP
sessions, delivery workers); this guards the listing against a caller that never finishes
its traces, which would otherwise grow without end."""

# The memory estimate: bytes one event and one trace cost beyond their text (object headers,
# floats, list slots), measured roughly with sys.getsizeof on CPython 3.13.
_EVENT_OVERHEAD: Final = 120
_TRACE_OVERHEAD: Final = 900


@attrs.frozen
class TraceEvent:
    """One line of a trace's timeline; ``offset`` is seconds since the trace started."""

    offset: float
    message: str
    is_error: bool = False


class Trace:
    """The timeline of one piece of work. Create with :meth:`Tracer.start`.

    Usable as a context manager: leaving the block finishes the trace, and an exception
    leaving it is recorded as an error (a cancellation as a plain event) before it goes on.
    """

    def __init__(
        self, tracer: Tracer, trace_id: str, family: str, title: str, clock: Callable[[], float]
    ) -> None:
        self.id = trace_id
        self.family = family
        self.title = _cut(title)
        self.started_at = time.time()
        """Wall-clock start (for display only; durations use the monotonic clock)."""
        self.errored = False
        self.finished = False
        self._tracer = tracer
        self._clock = clock
        self._start = clock()
        self._duration: float | None = None
        self._head: list[TraceEvent] = []
        self._tail: collections.deque[TraceEvent] = collections.deque(maxlen=TAIL_EVENTS)
        self._dropped = 0
        self._text_bytes = len(self.title)

    def printf(self, fmt: str, *args: object) -> None:
        """Append an event; ``fmt % args`` when arguments are given, like ``log.info``."""
        self._append(fmt % args if args else fmt, is_error=False)

    def event(self, message: str) -> None:
        """Append an event with this exact text."""
        self._append(message, is_error=False)

    def error(self, message: str) -> None:
        """Append an event and mark the trace errored (it also goes to the errors ring)."""
        self.errored = True
        self._append(message, is_error=True)

    def finish(self) -> None:
        """Stop the clock and hand the trace to its family's rings. Idempotent."""
        if self.finished:
            return
        self.finished = True
        self._duration = self._clock() - self._start
        self._tracer._finished(self)

    @property
    def elapsed(self) -> float:
        """Seconds the trace ran (finished) or has been running (active)."""
        if self._duration is not None:
            return self._duration
        return self._clock() - self._start

    @property
    def event_count(self) -> int:
        """Events appended so far, including the ones no longer kept."""
        return len(self._head) + self._dropped + len(self._tail)

    def events(self) -> list[TraceEvent]:
        """The kept events in order, with one "… N more" marker where events were dropped."""
        if not self._dropped:
            return [*self._head, *self._tail]
        at = self._tail[0].offset if self._tail else self._head[-1].offset
        marker = TraceEvent(at, f"… {self._dropped} more events not kept")
        return [*self._head, marker, *self._tail]

    def memory_estimate(self) -> int:
        """Rough bytes this trace holds (cheap: kept up to date as events come and go)."""
        kept = len(self._head) + len(self._tail)
        return _TRACE_OVERHEAD + kept * _EVENT_OVERHEAD + self._text_bytes

    def __enter__(self) -> Trace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            if isinstance(exc, trio.Cancelled):
                self.event("cancelled")
            else:
                self.error(f"{type(exc).__name__}: {exc}")
        self.finish()

    def _append(self, message: str, *, is_error: bool) -> None:
        event = TraceEvent(self._clock() - self._start, _cut(message), is_error)
        self._text_bytes += len(event.message)
        if len(self._head) < HEAD_EVENTS:
            self._head.append(event)
            return
        if len(self._tail) == TAIL_EVENTS:
            self._text_bytes -= len(self._tail[0].message)
            self._dropped += 1
        self._tail.append(event)

    def __repr__(self) -> str:
        return f"<Trace {self.id} {self.family} {self.title!r}>"


class TraceFamily:
    """The running and kept traces of one family. Read by the ``/debug/traces`` page."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._active: dict[str, Trace] = {}
        self.unlisted_active = 0
        """Running traces not listed because :data:`MAX_ACTIVE_LISTED` was reached."""
        self._buckets = [collections.deque[Trace](maxlen=RING_SIZE) for _ in BUCKETS]
        self._errors = collections.deque[Trace](maxlen=RING_SIZE)
        self.finished_total = 0
        self.errors_total = 0

    @property
    def active(self) -> list[Trace]:
        """Listed running traces, oldest first."""
        return list(self._active.values())

    def bucket(self, index: int) -> list[Trace]:
        """Kept traces of bucket ``index`` (lower bound ``BUCKETS[index]``), newest first."""
        return list(reversed(self._buckets[index]))

    @property
    def errors(self) -> list[Trace]:
        """Kept errored traces, newest first."""
        return list(reversed(self._errors))

    def bucket_sizes(self) -> list[int]:
        return [len(ring) for ring in self._buckets]

    def stored(self) -> Iterator[Trace]:
        """Every trace this family holds, each once (rings share traces)."""
        seen: set[str] = set()
        for trace in itertools.chain(
            self._active.values(), itertools.chain.from_iterable(self._buckets), self._errors
        ):
            if trace.id not in seen:
                seen.add(trace.id)
                yield trace

    def _started(self, trace: Trace) -> None:
        if len(self._active) < MAX_ACTIVE_LISTED:
            self._active[trace.id] = trace
        else:
            self.unlisted_active += 1

    def _finished(self, trace: Trace) -> None:
        if self._active.pop(trace.id, None) is None:
            self.unlisted_active = max(0, self.unlisted_active - 1)
        self.finished_total += 1
        elapsed = trace.elapsed
        for bound, ring in zip(BUCKETS, self._buckets, strict=True):
            if elapsed >= bound:
                ring.append(trace)
        if trace.errored:
            self.errors_total += 1
            self._errors.append(trace)


class Tracer:
    """Per-family trace state of one process; created once by the daemon and shared.

    ``clock`` (monotonic seconds) is for tests that need exact durations.
    """

    def __init__(
        self,
        families: Iterable[str] = FAMILIES,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._families = {name: TraceFamily(name) for name in families}
        self._clock = clock
        self._ids = itertools.count(1)

    @property
    def families(self) -> Mapping[str, TraceFamily]:
        return self._families

    def start(self, family: str, title: str) -> Trace:
        """Begin a trace of ``family``; it is listed as active until :meth:`Trace.finish`."""
        state = self._families.get(family)
        if state is None:
            raise ValueError(
                f"unknown trace family {family!r} (known: {', '.join(self._families)})"
            )
        trace = Trace(self, f"{next(self._ids):x}", family, title, self._clock)
        state._started(trace)
        return trace

    trace = start
    """``with tracer.trace("delivery", envelope_id) as t:`` reads better in a with statement."""

    def find(self, trace_id: str) -> Trace | None:
        """The running or kept trace with this id, or None (it may have left every ring)."""
        for family in self._families.values():
            for trace in family.stored():
                if trace.id == trace_id:
                    return trace
        return None

    def memory_estimate(self) -> int:
        """Rough bytes held by every running and kept trace (bounded by construction)."""
        return sum(
            trace.memory_estimate()
            for family in self._families.values()
            for trace in family.stored()
        )

    def _finished(self, trace: Trace) -> None:
        self._families[trace.family]._finished(trace)


def _cut(text: str) -> str:
    """Cut to :data:`MAX_MESSAGE_CHARS`, then escape what a peer may have put in it."""
    if len(text) > MAX_MESSAGE_CHARS:
        more = len(text) - MAX_MESSAGE_CHARS
        text = text[:MAX_MESSAGE_CHARS] + f"… ({more} more characters)"
    return printable(text)
