"""Delivered messages removed in batches (spool/removals.py), on a real spool directory.

Inside :meth:`Spool.batched_removals` a removal takes the message out of the index at once and
its files go with the next batch: one thread hop and one directory fsync for all that queued
up. Leaving the block drains the queue; a cancellation (or a crash) leaves the files in
``processing/``, which start-up returns to ``incoming/``: the message is delivered again,
never lost.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dispatch.spool import MessageState, Spool, UnknownMessageError, WrongStateError
from dispatch.spool.testing import commit, placed

MESSAGES = 40


@pytest.fixture
async def spool(tmp_path: Path) -> Spool:
    return await Spool.open(tmp_path / "spool")


def files_in(spool: Spool, state: MessageState) -> set[str]:
    return {p.name for p in (spool.directory / state.value).iterdir()}


async def claimed(spool: Spool, count: int) -> list[str]:
    for i in range(count):
        await commit(spool, b"Subject: %d\r\n\r\nbody\r\n" % i)
    ids = [e.id for e in await spool.claim_due(count)]
    assert len(ids) == count
    return ids


async def test_many_removals_leave_the_index_at_once_and_their_files_in_few_batches(
    spool: Spool,
) -> None:
    ids = await claimed(spool, MESSAGES)
    async with spool.batched_removals() as queue:
        for message_id in ids:
            await spool.remove(message_id)
            # Gone for every reader the moment remove() returns, files or not.
            with pytest.raises(UnknownMessageError):
                spool.get(message_id)
        assert spool.counts().total == 0
        assert spool.counts().total_bytes == 0
        assert [e.id for e in spool.entries()] == []
    # Leaving the block waited for the queue: no file is left anywhere.
    assert placed(spool.directory) == {}
    assert files_in(spool, MessageState.PROCESSING) == set()
    assert queue.removed == MESSAGES
    assert queue.pending == ()
    assert 1 <= queue.batches < MESSAGES  # removals that queued up went together


async def test_a_removed_message_cannot_be_removed_or_acted_on_again(spool: Spool) -> None:
    [message_id] = await claimed(spool, 1)
    async with spool.batched_removals():
        await spool.remove(message_id)
        with pytest.raises(UnknownMessageError):
            await spool.remove(message_id)
        with pytest.raises(UnknownMessageError):
            await spool.delete(message_id)
    assert placed(spool.directory) == {}


async def test_only_a_claimed_message_is_removed_through_the_queue(spool: Spool) -> None:
    waiting = await commit(spool)
    async with spool.batched_removals() as queue:
        with pytest.raises(WrongStateError):
            await spool.remove(waiting.id)
    assert queue.pending == ()
    assert queue.removed == 0
    assert placed(spool.directory) == {waiting.id: MessageState.INCOMING}


async def test_a_removal_queued_but_not_unlinked_is_delivered_again_after_a_restart(
    spool: Spool, tmp_path: Path
) -> None:
    """What a crash before the unlink leaves: the files in processing/. Cancelling the block
    before the removal task ran stands in for the crash (the task never got to unlink)."""
    delivered, other = await claimed(spool, 2)
    with trio.CancelScope() as scope:
        async with spool.batched_removals() as queue:
            scope.cancel()
            await spool.remove(delivered)  # queued; the checkpoint after it raises Cancelled
    assert scope.cancelled_caught
    assert queue.pending == (delivered,)
    assert queue.removed == 0
    with pytest.raises(UnknownMessageError):
        spool.get(delivered)  # this process treats it as gone...
    assert placed(spool.directory) == {
        delivered: MessageState.PROCESSING,  # ...but its files were left in place
        other: MessageState.PROCESSING,
    }
    reopened = await Spool.open(tmp_path / "spool")  # start-up after the "crash"
    assert reopened.get(delivered).state is MessageState.INCOMING  # due again, not lost
    again = {e.id for e in await reopened.claim_due(10)}
    assert again == {delivered, other}


async def test_outside_the_block_remove_unlinks_before_returning(spool: Spool) -> None:
    [message_id] = await claimed(spool, 1)
    async with spool.batched_removals():
        pass
    await spool.remove(message_id)  # no removal task: the files go now, as always
    assert placed(spool.directory) == {}


async def test_one_block_at_a_time(spool: Spool) -> None:
    async with spool.batched_removals():
        with pytest.raises(RuntimeError, match="already active"):
            async with spool.batched_removals():
                pass  # pragma: no cover - never entered


async def test_a_pair_and_a_one_file_message_both_go(spool: Spool) -> None:
    """A released message comes back as a pair (its envelope rewritten into a .json)."""
    one_file, pair = await claimed(spool, 2)
    await spool.release(spool.get(pair).envelope.after_attempt(next_attempt_at=0.0, error="4"))
    assert {e.id for e in await spool.claim_due(1)} == {pair}
    assert f"{pair}.json" in files_in(spool, MessageState.PROCESSING)
    async with spool.batched_removals() as queue:
        await spool.remove(one_file)
        await spool.remove(pair)
    assert placed(spool.directory) == {}
    assert files_in(spool, MessageState.PROCESSING) == set()
    assert queue.removed == 2


async def test_the_next_block_unlinks_what_a_cancelled_one_left(spool: Spool) -> None:
    """A delivery component restarted in the same process finishes its predecessor's queue."""
    [delivered] = await claimed(spool, 1)
    with trio.CancelScope() as scope:
        async with spool.batched_removals():
            scope.cancel()
            await spool.remove(delivered)
    assert placed(spool.directory) == {delivered: MessageState.PROCESSING}
    async with spool.batched_removals() as queue:
        pass
    assert queue.removed == 1
    assert placed(spool.directory) == {}


async def test_a_removal_that_fails_is_logged_and_the_rest_of_the_batch_goes(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``.json`` that cannot be unlinked (here: a directory in its place) keeps its message
    on disk; the next start-up would deliver it again. The others in the batch are removed."""
    blocked, fine = await claimed(spool, 2)
    processing = spool.directory / MessageState.PROCESSING.value
    (processing / f"{blocked}.json").mkdir()
    (processing / f"{blocked}.json" / "x").write_bytes(b"")
    async with spool.batched_removals() as queue:
        await spool.remove(blocked)
        await spool.remove(fine)
    assert queue.removed == 1
    assert f"{blocked}.eml" in files_in(spool, MessageState.PROCESSING)
    assert not any(name.startswith(fine) for name in files_in(spool, MessageState.PROCESSING))
    assert f"{blocked} was delivered but its files in processing/ could not be removed" in (
        caplog.text
    )
