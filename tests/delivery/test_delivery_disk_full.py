"""Regression: a full spool disk must not strand claimed messages (issue 8, disk-full scenario).

Before the fix, a failed attempt on a full disk could not write the message's new envelope,
so ``Spool.release`` raised and the message stayed in ``processing/`` until a restart: no
worker ever delivered it, so no space came back and intake refused mail for good.
"""

from __future__ import annotations

from pathlib import Path

from dispatch.spool import MessageState, Spool
from dispatch.spool.testing import commit, placed, tmp_files
from tests.conftest import fill, free_port
from tests.delivery.harness import running_dispatch
from tests.support.config import base_config
from tests.support.sink import StartSink
from tests.support.waiting import wait_until_async

MESSAGE = b"From: a@example.com\r\nSubject: full\r\n\r\nHello.\r\n"


async def test_release_without_rewrite_needs_no_space(small_fs: Path) -> None:
    spool = await Spool.open(small_fs / "spool")
    envelope = await commit(spool, b"body")
    await spool.claim(envelope.id)
    fill(small_fs / "filler", leave_pages=0)
    retry = envelope.after_attempt(next_attempt_at=1e12, error="421 later")
    await spool.release(retry, rewrite=False)
    assert placed(spool.directory) == {envelope.id: MessageState.INCOMING}
    assert tmp_files(spool.directory) == []
    assert spool.get(envelope.id).envelope == retry  # the index keeps the new schedule
    assert spool.next_due_time() == 1e12
    # The disk keeps the old envelope: a restart forgets only this attempt's bookkeeping.
    reopened = await Spool.open(small_fs / "spool")
    assert reopened.get(envelope.id).envelope == envelope
    await spool.claim(envelope.id)
    await spool.mark_failed(retry.after_attempt(next_attempt_at=0, error="550"), rewrite=False)
    assert placed(spool.directory) == {envelope.id: MessageState.FAILED}


async def test_failed_attempt_on_a_full_disk_is_retried_then_delivered(
    tmp_path: Path, small_fs: Path, start_sink: StartSink
) -> None:
    port = free_port()  # the upstream is down at first
    relay = {"name": "up", "kind": "smtp", "host": "127.0.0.1", "port": port, "tls": "none"}
    config = base_config(
        tmp_path,
        relays=[relay],
        spool={"directory": str(small_fs / "spool"), "retry_delays_seconds": [0.2]},
    )
    config["spool"]["max_retries"] = 1000
    async with running_dispatch(tmp_path, config) as dispatch:
        spool = dispatch.parts.spool
        message_id = await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE)
        await wait_until_async(lambda: spool.get(message_id).envelope.attempts >= 1)
        fill(small_fs / "filler", leave_pages=0)
        attempts = spool.get(message_id).envelope.attempts
        # Retried on schedule although no envelope can be written: never stuck in processing/.
        await wait_until_async(lambda: spool.get(message_id).envelope.attempts >= attempts + 3)
        assert spool.get(message_id).state is not MessageState.FAILED
        sink = start_sink(port=port)
        await wait_until_async(lambda: len(sink.messages) == 1)
        await wait_until_async(lambda: spool.counts().total == 0)
    assert placed(small_fs / "spool") == {}
