"""State changes: claim, release, fail, remove, retry, delete, capture — on disk and in counts."""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from dispatch.spool import (
    Envelope,
    MessageBusyError,
    MessageState,
    RecipientResult,
    Spool,
    SpoolCounts,
    UnknownMessageError,
    WrongStateError,
)
from dispatch.spool.testing import commit, placed

INCOMING, PROCESSING, FAILED = (
    MessageState.INCOMING,
    MessageState.PROCESSING,
    MessageState.FAILED,
)


@pytest.fixture
async def spool(tmp_path: Path) -> Spool:
    return await Spool.open(tmp_path / "spool")


def counts(spool: Spool) -> tuple[int, int, int, int]:
    c: SpoolCounts = spool.counts()
    return c.incoming, c.retrying, c.processing, c.failed


async def test_full_lifecycle_moves_files_and_counts(spool: Spool) -> None:
    root = spool.directory
    delivered, retried, failed = [await commit(spool, b"m%d" % i) for i in range(3)]
    assert counts(spool) == (3, 0, 0, 0)

    for envelope in (delivered, retried, failed):
        assert await spool.claim(envelope.id) == envelope
    assert counts(spool) == (0, 0, 3, 0)
    assert set(placed(root).values()) == {PROCESSING}

    await spool.remove(delivered.id)
    await spool.release(retried.after_attempt(next_attempt_at=0.0, error="421 busy"))
    await spool.mark_failed(failed.after_attempt(next_attempt_at=0.0, error="550 no"))
    assert counts(spool) == (1, 1, 0, 1)
    assert placed(root) == {retried.id: INCOMING, failed.id: FAILED}
    assert spool.get(retried.id).envelope.last_error == "421 busy"
    on_disk = Envelope.from_json((root / "incoming" / f"{retried.id}.json").read_bytes())
    assert on_disk == spool.get(retried.id).envelope
    assert on_disk.attempts == 1

    retried_again = await spool.retry_failed(failed.id, now=123.0)
    assert (retried_again.attempts, retried_again.last_error) == (0, None)
    assert retried_again.next_attempt_at == 123.0
    assert counts(spool) == (2, 1, 0, 0)

    await spool.delete(retried.id)
    await spool.delete(failed.id)
    assert counts(spool) == (0, 0, 0, 0)
    assert placed(root) == {}
    with pytest.raises(UnknownMessageError, match="no message"):
        spool.get(retried.id)


async def test_operations_in_the_wrong_state_say_so(spool: Spool) -> None:
    envelope = await commit(spool)
    with pytest.raises(WrongStateError, match=r"cannot remove .* it is incoming, not processing"):
        await spool.remove(envelope.id)
    with pytest.raises(WrongStateError, match="not failed"):
        await spool.retry_failed(envelope.id)
    await spool.claim(envelope.id)
    with pytest.raises(WrongStateError, match=r"cannot claim .* it is processing, not incoming"):
        await spool.claim(envelope.id)
    with pytest.raises(WrongStateError, match="not incoming or failed"):
        await spool.delete(envelope.id)
    for bad in ("spl_00000000000000000000000000", "../incoming/x", ""):
        with pytest.raises(UnknownMessageError):
            await spool.claim(bad)
    assert counts(spool) == (0, 0, 1, 0)


async def test_release_refuses_changes_to_intake_facts(spool: Spool) -> None:
    envelope = await commit(spool)
    await spool.claim(envelope.id)
    forged = attrs.evolve(envelope, recipients=("someone-else@example.test",))
    with pytest.raises(ValueError, match="only delivery fields may change"):
        await spool.release(forged)
    assert spool.get(envelope.id).state is PROCESSING


async def test_due_queue_hands_out_messages_in_time_order_and_not_early(spool: Spool) -> None:
    made = [await commit(spool, b"%d" % i) for i in range(3)]
    for envelope in made:
        await spool.claim(envelope.id)
    now = 1_000_000.0
    for envelope, delay in zip(made, (30, 10, 20), strict=True):
        await spool.release(envelope.after_attempt(next_attempt_at=now + delay, error="4xx"))

    assert spool.next_due_time() == now + 10
    assert await spool.claim_due(10, now=now + 5) == []
    first = await spool.claim_due(10, now=now + 25)
    assert [e.id for e in first] == [made[1].id, made[2].id]
    assert counts(spool) == (1, 1, 2, 0)
    assert await spool.claim_due(10, now=now + 29) == []
    assert [e.id for e in await spool.claim_due(10, now=now + 31)] == [made[0].id]
    assert spool.next_due_time() is None
    assert set(placed(spool.directory).values()) == {PROCESSING}


async def test_claim_due_respects_the_limit_and_arrival_order(spool: Spool) -> None:
    made = [await commit(spool, b"%d" % i, received_at=500.0) for i in range(5)]
    batch = await spool.claim_due(3, now=500.0)
    assert [e.id for e in batch] == [e.id for e in made[:3]]
    assert [e.id for e in await spool.claim_due(3, now=500.0)] == [e.id for e in made[3:]]


async def test_partly_delivered_message_keeps_its_results(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    envelope = await commit(spool, recipients=["a@x.test", "b@x.test", "c@x.test"])
    await spool.claim(envelope.id)
    ok = RecipientResult(status="delivered", response="250 ok", relay="primary", at=1.0)
    bounced = RecipientResult(status="failed", response="550 unknown", relay="primary", at=1.0)
    await spool.release(
        envelope.after_attempt(
            next_attempt_at=0.0, error="421", results={"a@x.test": ok, "c@x.test": bounced}
        )
    )
    reopened = await Spool.open(tmp_path / "spool")
    assert reopened.get(envelope.id).envelope.pending_recipients == ("b@x.test",)

    (claimed,) = await reopened.claim_due(1)
    await reopened.mark_failed(claimed.after_attempt(next_attempt_at=0.0, error="gave up"))
    retried = await reopened.retry_failed(envelope.id)
    # Delivered stays delivered; the bounced recipient gets another chance.
    assert retried.pending_recipients == ("b@x.test", "c@x.test")


async def test_release_all_claims_returns_them_unchanged(spool: Spool) -> None:
    made = [await commit(spool, b"%d" % i) for i in range(4)]
    for envelope in made[:3]:
        await spool.claim(envelope.id)
    assert await spool.release_all_claims() == 3
    assert counts(spool) == (4, 0, 0, 0)
    assert set(placed(spool.directory).values()) == {INCOMING}
    assert {e.id for e in await spool.claim_due(10)} == {e.id for e in made}


async def test_capture_links_the_body_into_the_local_inbox(spool: Spool) -> None:
    body = b"Subject: local\r\n\r\nhi\r\n"
    envelope = await commit(spool, body)
    await spool.claim(envelope.id)
    path = await spool.capture(envelope.id)
    assert path == spool.directory / "captured" / f"{envelope.id}.eml"
    assert path.read_bytes() == body
    assert path.stat().st_ino == spool.message_path(envelope.id).stat().st_ino  # a hard link
    captured_json = path.with_suffix(".json").read_bytes()
    assert Envelope.from_json(captured_json) == envelope
    await spool.remove(envelope.id)
    assert path.read_bytes() == body  # the inbox copy outlives the spooled message


async def test_entries_lists_a_snapshot_per_state(spool: Spool) -> None:
    made = [await commit(spool, b"%d" % i) for i in range(3)]
    await spool.claim(made[0].id)
    snapshot = spool.entries(INCOMING)
    await spool.claim(made[1].id)  # the spool changes while a reader iterates
    assert {e.id for e in snapshot} == {made[1].id, made[2].id}
    assert {e.id: e.state for e in spool.entries()} == {
        made[0].id: PROCESSING,
        made[1].id: PROCESSING,
        made[2].id: INCOMING,
    }


async def test_a_message_being_changed_is_busy(tmp_path: Path) -> None:
    limiter = trio.CapacityLimiter(1)
    spool = await Spool.open(tmp_path / "spool", limiter=limiter)
    envelope = await commit(spool)
    async with trio.open_nursery() as nursery:
        await limiter.acquire()  # hold the spool's only thread: the claim waits mid-operation
        nursery.start_soon(spool.claim, envelope.id)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(MessageBusyError, match="try again shortly"):
            await spool.delete(envelope.id)
        assert await spool.claim_due(10) == []  # the scanner skips it too
        limiter.release()
    assert spool.get(envelope.id).state is PROCESSING


async def test_wait_until_due_wakes_on_commit(spool: Spool) -> None:
    woke = trio.Event()

    async def scanner() -> None:
        await spool.wait_until_due()
        woke.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scanner)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            await commit(spool)
            await woke.wait()


async def test_wait_until_due_sleeps_until_the_next_attempt(spool: Spool) -> None:
    envelope = await commit(spool)
    await spool.claim(envelope.id)
    await spool.release(envelope.after_attempt(next_attempt_at=time.time() + 0.2, error=None))
    started = time.monotonic()
    with trio.fail_after(5):
        await spool.wait_until_due()
    assert time.monotonic() - started >= 0.15
    assert [e.id for e in await spool.claim_due(1)] == [envelope.id]
