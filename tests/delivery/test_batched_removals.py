"""Delivered messages' files are removed in batches, and none is left behind.

The real composition root delivers 60 messages found in the spool at start-up to a real SMTP
sink with 8 workers. Every message arrives exactly once, the index empties, and once the
daemon has stopped (the stop drains the removal queue) no file is left in any state
directory. The spy counts the real removal task's thread hops without changing them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from dispatch.spool import MessageState, transitions
from dispatch.spool import removals as removals_module
from dispatch.spool.layout import SpoolLayout
from tests.delivery.harness import running_dispatch
from tests.delivery.test_claim_batches import plant
from tests.support.config import base_config, smtp_relay
from tests.support.sink import StartSink, token_of
from tests.support.waiting import wait_until_async

MESSAGES = 60


async def test_every_delivered_message_is_gone_from_disk_after_the_stop(
    tmp_path: Path, start_sink: StartSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = [f"rm{i:03d}" for i in range(MESSAGES)]
    for token in tokens:
        plant(tmp_path / "spool", token)
    batches: list[int] = []
    real = transitions.remove_messages

    def counted(
        layout: SpoolLayout, message_ids: Iterable[str], state: MessageState
    ) -> dict[str, OSError]:
        batch = list(message_ids)
        batches.append(len(batch))
        return real(layout, batch, state)

    monkeypatch.setattr(removals_module, "remove_messages", counted)
    sink = start_sink()
    config = base_config(tmp_path, relays=[smtp_relay("out", sink.port)], spool={"worker_count": 8})
    async with running_dispatch(tmp_path, config) as dispatch:
        await wait_until_async(lambda: len(sink.messages) == MESSAGES, what="every message")
        await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
    arrived = Counter(token_of(m.content) for m in sink.messages)
    assert arrived == Counter(dict.fromkeys(tokens, 1))  # each exactly once
    for state in MessageState:
        assert list((tmp_path / "spool" / state.value).iterdir()) == [], state
    assert sum(batches) == MESSAGES  # every removal went through the queue
    assert len(batches) < MESSAGES  # and some went together
