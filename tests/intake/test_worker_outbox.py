"""What an intake worker puts on the link: a message's ``received`` event rides in its commit.

A session queues the commit's :class:`Committed` and then, with no checkpoint between, its
``received`` event (``IntakeContext.received``); :func:`worker.fold` sends the two as one
message, and the main process records the same event the session would have recorded itself.
"""

from __future__ import annotations

import attrs

from dispatch.intake import records, worker
from dispatch.intake.link import FROM_WORKER, Committed, Counters, Logged, decode, encode
from dispatch.spool import Envelope
from dispatch.spool.ids import new_id


def envelope() -> Envelope:
    return Envelope(
        id=new_id(),
        mail_from="a@example.com",
        recipients=("b@example.net",),
        source="smtp",
        peer_ip="127.0.0.1",
        auth_identity=None,
        tags=(),
        received_at=1_700_000_000.5,
        size=42,
        next_attempt_at=1_700_000_000.5,
    )


def test_a_received_event_rides_in_the_commit_just_before_it() -> None:
    first, second = envelope(), envelope()
    batch: list[worker.Queued] = [
        Committed(first),
        worker.Received(first, "Hello"),
        Counters({}),
        Committed(second),
        worker.Received(second, None),
    ]
    assert worker.fold(batch) == [
        Committed(first, received=True, subject="Hello"),
        Counters({}),
        Committed(second, received=True, subject=None),
    ]


def test_one_that_does_not_follow_its_commit_goes_as_its_own_event() -> None:
    # Its commit went in an earlier frame, or another message's commit came between.
    first, second = envelope(), envelope()
    (alone,) = worker.fold([worker.Received(first, "Hi")])
    (_, apart) = worker.fold([Committed(second), worker.Received(first, "Hi")])
    for message in (alone, apart):
        assert isinstance(message, Logged)
        expected = records.received(first, subject="Hi")
        assert message.event == attrs.evolve(expected, event_id=message.event.event_id)


def test_the_main_process_gets_what_the_session_would_have_recorded() -> None:
    written = envelope()
    (payload,) = encode(worker.fold([Committed(written), worker.Received(written, "Hi")]))
    (message,) = decode(payload, FROM_WORKER)
    assert isinstance(message, Committed)
    assert (message.envelope, message.received, message.subject) == (written, True, "Hi")
    # What the main process makes of it (intake/processes.py) is the session's own event.
    event = records.received(message.envelope, subject=message.subject)
    expected = records.received(written, subject="Hi")
    assert event == attrs.evolve(expected, event_id=event.event_id)
