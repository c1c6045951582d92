"""Bounded traces of short- and long-lived work, in the spirit of Go's ``x/net/trace``.

Theory of operation
-------------------
A :class:`Trace` is the timeline of one piece of work (an SMTP session, an API request, a
queued message, one delivery attempt, one relay's dialogue with its upstream, a health check):
a title, then timestamped events appended with :meth:`Trace.printf`, :meth:`Trace.event` and
:meth:`Trace.error`, then :meth:`Trace.finish`. The :class:`Tracer` lists traces while they
run and keeps some once they have finished, per *family* (the kind of work):

- one ring per latency bucket: a bucket "≥ X s" holds the :data:`RING_SIZE` most recent
  traces that took at least X seconds. As in ``x/net/trace`` the buckets are cumulative, so a
  slow trace also appears in every faster bucket, and "≥ 0 s" holds the most recent of all;
- one errors ring: the :data:`RING_SIZE` most recent traces that called :meth:`Trace.error`;
- a latency histogram: how many finished traces fell in each bucket (not cumulative), since
  the start — counts, not traces, so it costs the same whatever the load.

Traces link to each other: :meth:`Trace.child` starts a trace whose parent is this one, and
the parent's timeline gets an event linking to it (a session → the message it queued → each
delivery attempt → each relay's dialogue with its upstream). Links are ids, never references:
a linked trace that has left every ring is simply not found any more.

A queued message's trace lives as long as the message waits (across retries), so the
:class:`Tracer` follows messages by id (:meth:`Tracer.message_queued`,
:meth:`Tracer.message_trace`); it follows at most :data:`MAX_MESSAGES_FOLLOWED`, finishing the
one touched least recently to make room.

Everything is bounded whatever the load: a trace keeps its first :data:`HEAD_EVENTS` and last
:data:`TAIL_EVENTS` events (the middle is counted, shown as one "… N more" marker), an event
message is cut at :data:`MAX_MESSAGE_CHARS`, a trace lists at most :data:`MAX_CHILDREN`
children, the rings have fixed sizes, and at most :data:`MAX_ACTIVE_LISTED` running traces per
family are listed (later ones still work and are kept when they finish; they are only missing
from the "active" list, which says so). All text goes through :func:`dispatch.logs.printable`,
so whatever a peer put in it is escaped; only :meth:`Trace.event_lines` (a multi-line SMTP
reply) makes an event of several lines, each escaped on its own.

Traces are plain objects updated on the Trio thread: no I/O, no locks. Event times come from
a monotonic clock (offsets from the trace's start); the start is also stamped with the wall
clock for display.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import ClassVar, Final, NamedTuple

import attrs
import trio

from dispatch.logs import printable

FAMILIES: Final = (
    "smtp.session",
    "api.request",
    "message",
    "delivery.attempt",
    "relay.dialogue",
    "health",
)
"""The families Dispatch traces, in the order of the flow; :class:`Tracer` refuses others (a
typo is a bug)."""

FAMILY_DESCRIPTIONS: Final = {
    "smtp.session": "inbound SMTP sessions: the dialogue, TLS, the messages queued",
    "api.request": "HTTP API requests that send mail",
    "message": "queued messages, from acceptance until delivered or failed",
    "delivery.attempt": "one delivery attempt of one message: routes, relays, outcomes",
    "relay.dialogue": "a relay's dialogue with its upstream for one attempt",
    "health": "/health checks",
}

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

MAX_CHILDREN: Final = 100
"""Children listed per trace (a long SMTP session may queue thousands of messages); the rest
are counted. The timeline's own events link to children too, within the event bounds."""

MAX_MESSAGES_FOLLOWED: Final = 1000
"""Queued messages followed by a trace at once. A spool may hold far more; the message touched
least recently stops being followed (its trace finishes, saying so), and a later attempt of it
starts a new trace."""

MAX_ACTIVE_LISTED: Final = 1000
"""Running traces listed per family. Running work is bounded by its own limits (SMTP
sessions, delivery workers); this guards the listing against a caller that never finishes
its traces, which would otherwise grow without end."""

# The memory estimate: bytes one event and one trace cost beyond their text (object headers,
# floats, list slots), measured roughly with sys.getsizeof on CPython 3.13.
_EVENT_OVERHEAD: Final = 120
_TRACE_OVERHEAD: Final = 900
_LINK_OVERHEAD: Final = 150


@attrs.frozen
class TraceLink:
    """Another trace, named by id (it may have left every ring since): for links on pages."""

    trace_id: str
    family: str
    title: str


class TraceEvent(NamedTuple):
    """One line of a trace's timeline; ``offset`` is seconds since the trace started.

    A named tuple, not a frozen attrs class: one is made per SMTP command and reply."""

    offset: float
    message: str
    is_error: bool = False
    link: TraceLink | None = None


class Trace:
    """The timeline of one piece of work. Create with :meth:`Tracer.start` or :meth:`child`.

    Usable as a context manager: leaving the block finishes the trace, and an exception
    leaving it is recorded as an error (a cancellation as a plain event) before it goes on.
    """

    recording: ClassVar[bool] = True  # False: it keeps nothing, skip formatting (untraced.py)

    def __init__(
        self,
        tracer: Tracer,
        trace_id: str,
        family: str,
        title: str,
        clock: Callable[[], float],
        parent: TraceLink | None = None,
    ) -> None:
        self.id = trace_id
        self.family = family
        self.title = _cut(title)
        self.parent = parent
        self.started_at = time.time()
        """Wall-clock start (for display only; durations use the monotonic clock)."""
        self.errored = False
        self.finished = False
        self.message_id: str | None = None
        """The queued message a ``message`` trace follows (see :meth:`Tracer.message_queued`)."""
        self._tracer = tracer
        self._clock = clock
        self._start = clock()
        self._duration: float | None = None
        self._head: list[TraceEvent] = []
        self._tail: collections.deque[TraceEvent] = collections.deque(maxlen=TAIL_EVENTS)
        self._dropped = 0
        self._children: list[TraceLink] = []
        self._child_ids: set[str] | None = None  # made with the first child (idle sessions)
        self.children_dropped = 0
        """Children started beyond :data:`MAX_CHILDREN` (not listed, still linked in events)."""
        self._text_bytes = len(self.title)

    @property
    def link(self) -> TraceLink:
        """This trace, as a link another trace's page can show."""
        return TraceLink(self.id, self.family, self.title)

    @property
    def children(self) -> list[TraceLink]:
        """The traces started with :meth:`child` (the first :data:`MAX_CHILDREN`), in order."""
        return list(self._children)

    def child(self, family: str, title: str, *, note: str = "") -> Trace:
        """Start a trace of ``family`` whose parent is this one; this timeline gets an event
        (``note``, "started" by default) linking to it."""
        child = self._tracer.start(family, title, parent=self.link)
        self.linked(child.link, note or "started")
        return child

    def linked(self, link: TraceLink, message: str) -> None:
        """Append an event that links to another trace, and list it as a child if new."""
        ids = self._child_ids = self._child_ids or set()
        if link.trace_id not in ids:
            if len(self._children) < MAX_CHILDREN:
                self._children.append(link)
                ids.add(link.trace_id)
                self._text_bytes += _LINK_OVERHEAD + len(link.title)
            else:
                self.children_dropped += 1
        self._append(message, is_error=False, link=link)

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

    def event_lines(self, lines: Iterable[str], *, is_error: bool = False) -> None:
        """Append one event of several lines (each escaped); ``is_error`` as :meth:`error`."""
        self.errored = self.errored or is_error
        self._append(_cut_lines(lines), is_error=is_error, escaped=True)

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

    def _append(
        self,
        message: str,
        *,
        is_error: bool,
        link: TraceLink | None = None,
        escaped: bool = False,
    ) -> None:
        text = message if escaped else _cut(message)
        event = TraceEvent(self._clock() - self._start, text, is_error, link)
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
        self.histogram = [0] * len(BUCKETS)
        """Finished traces per latency bucket: from ``BUCKETS[i]`` up to ``BUCKETS[i + 1]`` s."""
        self.seconds_total = 0.0
        """The summed duration of every finished trace (for the mean)."""

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
        self.seconds_total += elapsed
        for bound, ring in zip(BUCKETS, self._buckets, strict=True):
            if elapsed >= bound:
                ring.append(trace)
        self.histogram[max(0, bisect.bisect_right(BUCKETS, elapsed) - 1)] += 1
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
        # Followed messages, the one touched least recently first.
        self._messages: collections.OrderedDict[str, Trace] = collections.OrderedDict()

    @property
    def families(self) -> Mapping[str, TraceFamily]:
        return self._families

    def start(self, family: str, title: str, *, parent: TraceLink | None = None) -> Trace:
        """Begin a trace of ``family``; it is listed as active until :meth:`Trace.finish`.

        ``parent`` only names the parent on this trace's page; :meth:`Trace.child` also puts
        the link on the parent's."""
        state = self._families.get(family)
        if state is None:
            raise ValueError(
                f"unknown trace family {family!r} (known: {', '.join(self._families)})"
            )
        trace = Trace(self, f"{next(self._ids):x}", family, title, self._clock, parent)
        state._started(trace)
        return trace

    trace = start
    """``with tracer.trace("delivery.attempt", envelope_id) as t:`` reads better."""

    def message_queued(
        self,
        message_id: str,
        *,
        mail_from: str,
        recipients: Sequence[str],
        size: int,
        parent: Trace | None,
    ) -> Trace:
        """Start following a message just queued: a ``message`` trace, the child of the
        session or request that queued it (``parent``; None when that is not traced here)."""
        title = message_title(message_id, mail_from, recipients)
        note = f"queued {message_id} ({size} bytes)"
        self._make_room(message_id)
        trace = (
            self.start("message", title)
            if parent is None
            else parent.child("message", title, note=note)
        )
        trace.event(f"queued: {size} bytes, {len(recipients)} recipient(s)")
        return self._follow(message_id, trace)

    def message_trace(self, message_id: str, title: str = "") -> Trace:
        """The trace following ``message_id``; a new one if none does (it was queued by an
        intake worker process, before this process started, or followed no longer)."""
        trace = self._messages.get(message_id)
        if trace is not None:
            self._messages.move_to_end(message_id)
            return trace
        self._make_room(message_id)
        trace = self.start("message", title or message_id)
        trace.event(
            "picked up for delivery: queued by another process (an intake worker, an earlier "
            "run) or no longer followed since"
        )
        return self._follow(message_id, trace)

    def find(self, trace_id: str) -> Trace | None:
        """The running or kept trace with this id, or None (it may have left every ring)."""
        for family in self._families.values():
            for trace in family.stored():
                if trace.id == trace_id:
                    return trace
        for trace in self._messages.values():  # followed, but beyond the listing limit
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

    def _make_room(self, message_id: str) -> None:
        """Before following ``message_id``: stop following the least recently touched message
        if the limit is reached (first, so that the new trace is listed as active)."""
        previous = self._messages.pop(message_id, None)
        if previous is not None:  # queued again under the same id: a bug, but stay bounded
            previous.finish()
        while len(self._messages) >= MAX_MESSAGES_FOLLOWED:
            _, oldest = self._messages.popitem(last=False)
            oldest.event(
                f"no longer followed: more than {MAX_MESSAGES_FOLLOWED} messages are waiting "
                "(a later attempt starts a new trace)"
            )
            oldest.finish()

    def _follow(self, message_id: str, trace: Trace) -> Trace:
        trace.message_id = message_id
        self._messages[message_id] = trace
        return trace

    def _finished(self, trace: Trace) -> None:
        if trace.message_id is not None and self._messages.get(trace.message_id) is trace:
            del self._messages[trace.message_id]
        self._families[trace.family]._finished(trace)


def message_title(message_id: str, mail_from: str, recipients: Sequence[str]) -> str:
    """``<id> <sender> → first recipients``: what a message trace is called (cut like any)."""
    shown = ", ".join(recipients[:3]) + (
        f" and {len(recipients) - 3} more" if len(recipients) > 3 else ""
    )
    return f"{message_id} <{mail_from}> → {shown}"


def _cut(text: str) -> str:
    """Cut to :data:`MAX_MESSAGE_CHARS`, then escape what a peer may have put in it."""
    if len(text) > MAX_MESSAGE_CHARS:
        more = len(text) - MAX_MESSAGE_CHARS
        text = text[:MAX_MESSAGE_CHARS] + f"… ({more} more characters)"
    return printable(text)


def _cut_lines(lines: Iterable[str]) -> str:
    """Each line escaped, joined by newlines, the whole cut to :data:`MAX_MESSAGE_CHARS`."""
    text = "\n".join(printable(line) for line in lines)
    if len(text) > MAX_MESSAGE_CHARS:
        more = len(text) - MAX_MESSAGE_CHARS
        text = text[:MAX_MESSAGE_CHARS] + f"… ({more} more characters)"
    return text
