"""The spool's age sweeps (``dispatch/spool/sweep.py``) on real directories.

Captured copies are written here as the ``local`` relay leaves them (``<id>.eml`` and
``<id>.json`` in ``captured/``) when a test needs hundreds of them; the retention tests make
theirs through the spool itself.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import trio

from dispatch.config.settings import RetentionSettings
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.vars import ProcessInfo, debug_vars
from dispatch.retention import Retention
from dispatch.spool import Envelope, new_id
from dispatch.spool.sweep import SWEEP_BATCH, SpoolSweeper
from tests.retention.conftest import DAY, date, world

WEEK_AGO = time.time() - 7 * DAY  # evaluated at import: the copies below are far from it


def write_copy(captured: Path, *, days_ago: float, body: bool = True, envelope: bool = True) -> str:
    message_id = new_id()
    if body:
        (captured / f"{message_id}.eml").write_bytes(b"Subject: s\r\n\r\nx\r\n")
        date(captured / f"{message_id}.eml", days_ago=days_ago)
    if envelope:
        data = Envelope(
            id=message_id,
            mail_from="a@example.test",
            recipients=("b@example.test",),
            source="smtp",
            peer_ip=None,
            auth_identity=None,
            tags=(),
            received_at=0.0,
            size=14,
        ).to_json()
        (captured / f"{message_id}.json").write_bytes(data)
        date(captured / f"{message_id}.json", days_ago=days_ago)
    return message_id


class LoopTicker:
    """Ticks every 10 ms; the longest gap shows whether the event loop was ever blocked."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest_gap = 0.0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        last = trio.current_time()
        while True:
            await trio.sleep(0.01)
            now = trio.current_time()
            self.longest_gap = max(self.longest_gap, now - last)
            last, self.ticks = now, self.ticks + 1


async def test_many_old_copies_go_in_batches_without_blocking_the_loop(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        count = 5 * SWEEP_BATCH + 17
        old = {write_copy(w.captured, days_ago=8) for _ in range(count)}
        young = {write_copy(w.captured, days_ago=6) for _ in range(30)}
        assert w.captured_ids() == old | young
        ticker = LoopTicker()
        async with trio.open_nursery() as nursery:
            await nursery.start(ticker.run)
            result = await SpoolSweeper(w.spool).remove_captured(WEEK_AGO)
            nursery.cancel_scope.cancel()
        assert result.removed == count
        assert result.error is None
        assert w.captured_ids() == young
    assert ticker.ticks > 0
    assert ticker.longest_gap < 0.5, f"the event loop was blocked for {ticker.longest_gap:.2f} s"


async def test_a_body_being_captured_right_now_is_not_taken_for_a_leftover(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        # The local relay links the spooled body first (its modification time is when the
        # message arrived, possibly days ago), then writes the envelope: in between the
        # copy has an old body and no envelope. Linking sets the change time to now.
        in_progress = write_copy(w.captured, days_ago=30, envelope=False)
        bodiless = write_copy(w.captured, days_ago=30, body=False)
        result = await SpoolSweeper(w.spool).remove_captured(WEEK_AGO)
        assert result.removed == 1
        assert w.captured_ids() == {in_progress}
        assert bodiless not in w.captured_ids()


async def test_names_that_are_not_captured_copies_are_never_touched(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        foreign = ["README", "notes.txt", "spl_not-an-id.eml", "spl_01.json", ".hidden"]
        for name in foreign:
            (w.captured / name).write_text("kept")
            date(w.captured / name, days_ago=100)
        copy = write_copy(w.captured, days_ago=100)
        result = await SpoolSweeper(w.spool).remove_captured(WEEK_AGO)
        assert result.removed == 1
        assert sorted(p.name for p in w.captured.iterdir()) == sorted(foreign)
        assert copy not in w.captured_ids()


async def test_a_failed_message_retried_and_failed_again_counts_from_its_new_failure(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        failed = await w.failed_message(days_ago=30)
        retried = await w.spool.retry_failed(failed.id)
        await w.spool.claim(retried.id)
        await w.spool.mark_failed(retried.after_attempt(next_attempt_at=0.0, error="550 again"))
        result = await SpoolSweeper(w.spool).remove_failed(WEEK_AGO)
        assert result.removed == 0
        assert w.spool.get(failed.id).envelope.last_error == "550 again"


async def test_a_captured_folder_that_cannot_be_read_fails_the_run_not_the_component(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.rows(days_ago=8, tag="old")
        shutil.rmtree(w.captured)
        w.captured.write_text("a file where the folder should be")
        stats = Stats()
        component = Retention(lambda: RetentionSettings(), w.store, SpoolSweeper(w.spool), stats)
        run = await component.run_once()
        shown = debug_vars(stats, ProcessInfo.current(), spool_counts=w.spool.counts(), relays=[])
        os.unlink(w.captured)
        w.captured.mkdir()
        copy = write_copy(w.captured, days_ago=8)
        again = await component.run_once()
    assert not run.ok
    assert len(run.errors) == 1
    assert run.errors[0].startswith(f"captured: cannot list {w.captured}")
    assert run.removed["delivered_log"] == 1  # the other kinds went all the same
    last = shown["dispatch/retention/lastRun"]
    assert isinstance(last, dict)
    assert last["result"] == "failed"
    assert last["errors"] == list(run.errors)
    assert last["removed"] == dict(run.removed)
    assert again.ok
    assert again.removed["captured"] == 1
    assert copy not in w.captured_ids()
    assert stats.retention_runs.values == {"failed": 1, "ok": 1}
    assert stats.retention_last_success is not None
    assert stats.retention_last_success >= again.started_at
