"""A delivery component restarted by the supervisor is the one everybody else talks to."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dispatch.control.client import request
from dispatch.spool import Envelope
from tests.delivery.harness import running_dispatch
from tests.support.config import base_config
from tests.support.waiting import wait_until_async


async def test_send_test_is_delivered_after_the_supervisor_restarted_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_dispatch(tmp_path, base_config(tmp_path)) as dispatch:
        spool, supervisor = dispatch.parts.spool, dispatch.supervisor
        claim_due = spool.claim_due

        async def broken_once(
            limit: int, *, now: float | None = None, read_bytes: int = 0
        ) -> list[Envelope]:
            monkeypatch.setattr(spool, "claim_due", claim_due)
            raise RuntimeError("an injected crash of the delivery scanner")

        monkeypatch.setattr(spool, "claim_due", broken_once)
        await dispatch.submit("a@example.com", ["b@example.org"], b"Subject: wake\r\n\r\nx\r\n")
        await wait_until_async(lambda: supervisor.restarts["delivery"] == 1)

        args = {"relay": "local", "to": "ops@example.org", "from": "dispatch@example.com"}
        data_dir = Path(dispatch.parts.settings.current.data_dir)
        answer = await trio.to_thread.run_sync(request, data_dir, "send-test", args)
        await wait_until_async(lambda: spool.counts().total == 0)

    assert answer["ok"], answer
    assert answer["result"]["outcome"] == "delivered", answer
    captured = list((tmp_path / "spool" / "captured").glob("*.eml"))
    assert len(captured) == 2, captured  # the first message and the test message
