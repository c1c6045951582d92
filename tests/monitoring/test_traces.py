"""Traces: bounded events, latency buckets, errors ring, lookup and memory estimate."""

from __future__ import annotations

import pytest
import trio

from dispatch.monitoring import traces
from dispatch.monitoring.traces import BUCKETS, RING_SIZE, Tracer


class FakeClock:
    """A monotonic clock the test moves by hand, so durations are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trace_records_events_with_offsets_and_finishes_once() -> None:
    clock = FakeClock()
    tracer = Tracer(clock=clock)
    trace = tracer.start("smtp.session", "192.0.2.7:4711")
    trace.printf("EHLO %s", "client.example")
    clock.now += 0.25
    trace.event("MAIL FROM accepted")
    assert tracer.families["smtp.session"].active == [trace]

    clock.now += 0.05
    trace.finish()
    trace.finish()  # idempotent

    family = tracer.families["smtp.session"]
    assert family.active == []
    assert family.finished_total == 1
    assert trace.elapsed == pytest.approx(0.3)
    assert [(e.offset, e.message) for e in trace.events()] == [
        (0.0, "EHLO client.example"),
        (0.25, "MAIL FROM accepted"),
    ]
    assert tracer.find(trace.id) is trace
    assert tracer.find("no-such-id") is None


def test_buckets_are_cumulative_rings_of_recent_traces() -> None:
    clock = FakeClock()
    tracer = Tracer(clock=clock)
    durations = [0.0, 0.07, 0.3, 2.0, 150.0]
    for seconds in durations:
        trace = tracer.start("delivery.attempt", f"took {seconds}")
        clock.now += seconds
        trace.finish()

    family = tracer.families["delivery.attempt"]
    expected = [sum(1 for d in durations if d >= bound) for bound in BUCKETS]
    assert family.bucket_sizes() == expected
    assert [t.title for t in family.bucket(BUCKETS.index(1.0))] == ["took 150.0", "took 2.0"]

    for _ in range(3 * RING_SIZE):
        tracer.start("delivery.attempt", "fast").finish()
    assert family.bucket_sizes()[0] == RING_SIZE
    assert family.bucket_sizes()[BUCKETS.index(100.0)] == 1  # slow ones are not pushed out
    assert all(t.title == "fast" for t in family.bucket(0))


def test_errors_ring_keeps_the_most_recent_errored_traces() -> None:
    tracer = Tracer()
    for n in range(25):
        with tracer.trace("api.request", f"request {n}") as trace:
            if n % 2:
                trace.error(f"failure {n}")
    family = tracer.families["api.request"]
    assert family.errors_total == 12
    assert len(family.errors) == RING_SIZE
    assert family.errors[0].title == "request 23"  # newest first
    assert all(t.errored for t in family.errors)
    last = family.errors[0].events()[-1]
    assert last.is_error
    assert last.message == "failure 23"


def test_context_manager_records_exception_as_error_and_reraises() -> None:
    tracer = Tracer()
    with pytest.raises(KeyError), tracer.trace("health", "database") as trace:
        raise KeyError("boom")
    assert trace.finished
    assert trace.errored
    assert trace.events()[-1].message == "KeyError: 'boom'"
    assert tracer.families["health"].errors == [trace]


async def test_cancellation_is_an_event_not_an_error() -> None:
    tracer = Tracer()
    with trio.move_on_after(0), tracer.trace("delivery.attempt", "cancelled work") as trace:
        await trio.sleep(1)
    assert trace.finished
    assert not trace.errored
    assert trace.events()[-1].message == "cancelled"


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown trace family 'smtp'"):
        Tracer().start("smtp", "x")


def test_events_per_trace_are_bounded_with_a_marker() -> None:
    tracer = Tracer()
    trace = tracer.start("smtp.session", "chatty")
    for n in range(1000):
        trace.printf("command %d", n)
    trace.event("x" * 100_000)  # a hostile line is cut
    events = trace.events()
    kept = traces.HEAD_EVENTS + traces.TAIL_EVENTS
    assert len(events) == kept + 1
    assert trace.event_count == 1001
    assert events[traces.HEAD_EVENTS - 1].message == f"command {traces.HEAD_EVENTS - 1}"
    assert events[traces.HEAD_EVENTS].message == f"… {1001 - kept} more events not kept"
    assert len(events[-1].message) < traces.MAX_MESSAGE_CHARS + 50
    assert events[-2].message == "command 999"


def test_ten_thousand_traces_keep_memory_bounded() -> None:
    clock = FakeClock()
    tracer = Tracer(clock=clock)
    families = traces.FAMILIES
    estimates: list[int] = []
    for n in range(10_000):
        trace = tracer.start(families[n % len(families)], f"trace {n}")
        for k in range(20):
            trace.printf("step %d of trace %d", k, n)
        if n % 7 == 0:
            trace.error("went wrong")
        clock.now += (n % 13) * 0.1
        trace.finish()
        if n in (2_000, 9_999):
            estimates.append(tracer.memory_estimate())

    stored = {t.id for family in tracer.families.values() for t in family.stored()}
    per_family = RING_SIZE * (len(BUCKETS) + 1)
    assert len(stored) <= len(families) * per_family
    assert all(not family.active for family in tracer.families.values())
    assert estimates[1] <= estimates[0] * 1.1  # it stopped growing long ago
    assert estimates[1] < 2_000_000
    # Old traces are gone from every ring, recent ones can be found.
    assert tracer.find("1") is None
    assert tracer.find(f"{10_000:x}") is not None


def test_unfinished_traces_beyond_the_listing_limit_are_counted_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(traces, "MAX_ACTIVE_LISTED", 3)
    tracer = Tracer()
    started = [tracer.start("smtp.session", f"s{n}") for n in range(5)]
    family = tracer.families["smtp.session"]
    assert len(family.active) == 3
    assert family.unlisted_active == 2
    for trace in started:
        trace.finish()
    assert family.active == []
    assert family.unlisted_active == 0
    assert family.finished_total == 5
