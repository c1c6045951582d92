"""A week of message-log history for the scale test, written through the storage API.

:func:`load_history` writes ``rows`` message-log rows into a new database file with
:func:`dispatch.storage.log_batch.write_batch` (the log writer's own transaction: the rows,
the address index and the counters) in batches of :data:`BATCH`, before the daemon starts.
Messages arrive over the last 7 days, more by day than by night, so the Overview's 24-hour
chart has a shape; 90 % are delivered (3 % after a deferral), 5 % are refused. Senders,
recipients, subjects, tags, sources, API keys and relays vary so that every filter of the
Message log has something to find and something to skip.
"""

from __future__ import annotations

import math
import random
from functools import partial
from pathlib import Path
from typing import Final

import attrs
import trio

from dispatch.storage import EventKind, MessageEvent, Source, SqliteDatabase
from dispatch.storage.log_batch import write_batch

BATCH: Final = 5000
DAYS: Final = 7
KEYS: Final = tuple(f"dsp_live_scale{n:03d}" for n in range(5))
TAGS: Final = ("billing", "newsletter", "alerts", "signup")
RELAYS: Final = ("primary", "backup")


@attrs.frozen
class Loaded:
    """What was written: rows and messages, and facts the searches are checked against."""

    rows: int
    messages: int
    rare_address: str  # the recipient of exactly one message
    rare_address_messages: int
    failed: int  # messages with a failed event


def _when(rng: random.Random, now: float) -> float:
    """A time in the last week, weighted towards the day (a busy hour has 3x a quiet one)."""
    while True:
        at = now - rng.random() * DAYS * 86_400
        hour = (at % 86_400) / 3600
        weight = 2 + math.sin((hour - 8) / 24 * 2 * math.pi)
        if rng.random() * 3 < weight:
            return at


def _attempt(
    received: MessageEvent, event: EventKind, after: float, attempt: int, response: str
) -> MessageEvent:
    """A delivery attempt's row for the message ``received`` began."""
    return MessageEvent(
        message_id=received.message_id,
        event=event,
        at=received.at + after,
        sender=received.sender,
        recipients=received.recipients,
        size=received.size,
        relay=RELAYS[int(received.message_id[-1]) % 2] if received.message_id else None,
        route="default",
        attempt=attempt,
        duration_ms=None if event == "retried" else 25.0,
        response=response,
        remote_id="D1" if event == "delivered" else None,
    )


def _message(rng: random.Random, number: int, now: float) -> list[MessageEvent]:
    source: Source = "api" if number % 3 == 0 else "smtp"
    received = MessageEvent(
        message_id=f"spl_5CA{number:023d}",  # a well-formed id (26 base32 characters)
        event="received",
        at=_when(rng, now),
        source=source,
        peer_ip="192.0.2.10",
        sender=f"app{number % 20}@shop.example",
        recipients=(f"customer{rng.randrange(20_000)}@example.org",),
        subject=f"Order {number} confirmed",
        size=2048,
        tags=(TAGS[number % len(TAGS)],),
        api_key_prefix=KEYS[number % len(KEYS)] if source == "api" else None,
    )
    outcome = rng.random()
    if outcome < 0.03:  # deferred once, then delivered
        return [
            received,
            _attempt(received, "retried", 2, 1, "451 4.3.0 try later"),
            _attempt(received, "delivered", 300, 2, "250 2.0.0 Ok: queued as D1"),
        ]
    if outcome < 0.95:
        return [received, _attempt(received, "delivered", 1, 1, "250 2.0.0 Ok: queued as D1")]
    return [received, _attempt(received, "failed", 1, 1, "550 5.1.1 no such user")]


async def _write(path: Path, events: list[MessageEvent]) -> None:
    database = SqliteDatabase(path)
    try:
        for start in range(0, len(events), BATCH):
            await database.write(partial(write_batch, records=events[start : start + BATCH]))
    finally:
        await database.aclose()


def load_history(path: Path, rows: int, now: float, seed: int = 15) -> Loaded:
    """Write about ``rows`` rows (whole messages) into a new database at ``path``."""
    rng = random.Random(seed)
    events: list[MessageEvent] = []
    number = 0
    while len(events) < rows:
        events.extend(_message(rng, number, now))
        number += 1
    rare = "rare.person@example.net"
    events.append(
        MessageEvent(
            message_id="spl_5CAR" + "0" * 22,
            event="received",
            at=now - 3600,
            source="smtp",
            sender="app1@shop.example",
            recipients=(rare,),
            subject="The one message to a rare address",
        )
    )
    failed = len({e.message_id for e in events if e.event == "failed"})
    trio.run(_write, path, events)
    return Loaded(len(events), number + 1, rare, 1, failed)
