"""The scanner claims up to ``worker_count`` due messages in one thread hop.

A spool holding 24 due messages at start-up, ``spool.worker_count = 8``: the scanner claims 8
in one call, hands them to the workers one by one and claims the next 8 only when its hand is
empty, so 24 messages take 3 claims of 8 however the workers fall idle. Every message
reaches a real SMTP sink exactly once and the spool ends empty. The spy records the calls to
the real :meth:`Spool.claim_due`; it changes nothing about what the spool does.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from dispatch.spool import Envelope, MessageState, Spool, new_id
from tests.delivery.harness import running_dispatch
from tests.support.config import base_config, smtp_relay
from tests.support.sink import StartSink, token_of
from tests.support.waiting import wait_until_async

MESSAGES = 24
WORKERS = 8


def plant(spool: Path, token: str) -> None:
    """A committed message in ``incoming/``, as start-up recovery finds it."""
    message_id = new_id()
    body = f"From: a@example.com\r\nX-Fault-Token: {token}\r\n\r\n{token}\r\n".encode()
    envelope = Envelope(
        id=message_id,
        mail_from="a@example.com",
        recipients=("b@example.org",),
        source="smtp",
        peer_ip="127.0.0.1",
        auth_identity=None,
        tags=(),
        received_at=time.time(),
        size=len(body),
        attempts=0,
        next_attempt_at=time.time(),
    )
    incoming = spool / MessageState.INCOMING.value
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / f"{message_id}.eml").write_bytes(body)
    (incoming / f"{message_id}.json").write_bytes(envelope.to_json())


async def test_due_messages_are_claimed_a_full_batch_at_a_time(
    tmp_path: Path, start_sink: StartSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = [f"tok{i:03d}" for i in range(MESSAGES)]
    for token in tokens:
        plant(tmp_path / "spool", token)
    calls: list[tuple[int, int]] = []  # (limit asked, messages claimed)
    real = Spool.claim_due

    async def recorded(
        self: Spool, limit: int, *, now: float | None = None, read_bytes: int = 0
    ) -> list[Envelope]:
        claimed = await real(self, limit, now=now, read_bytes=read_bytes)
        calls.append((limit, len(claimed)))
        return claimed

    monkeypatch.setattr(Spool, "claim_due", recorded)
    sink = start_sink()
    config = base_config(
        tmp_path, relays=[smtp_relay("out", sink.port)], spool={"worker_count": WORKERS}
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        await wait_until_async(lambda: len(sink.messages) == MESSAGES, what="every message")
        await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
    assert calls == [(WORKERS, WORKERS)] * (MESSAGES // WORKERS)  # full batches only
    arrived = Counter(token_of(m.content) for m in sink.messages)
    assert arrived == Counter(dict.fromkeys(tokens, 1))  # each exactly once
