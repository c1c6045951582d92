"""Removals after delivery share thread hops; each caller still gets its own outcome."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

import dispatch.spool.spool as spool_module
from dispatch.spool import MessageState, Spool, SpoolWriteError
from dispatch.spool.testing import commit

MESSAGES = 30


async def claimed_spool(tmp_path: Path) -> tuple[Spool, list[str]]:
    spool = await Spool.open(tmp_path / "spool")
    ids = [
        (await commit(spool, f"Subject: {n}\r\n\r\nhi\r\n".encode())).id for n in range(MESSAGES)
    ]
    claimed = await spool.claim_due(limit=MESSAGES)
    assert sorted(e.id for e in claimed) == sorted(ids)
    return spool, ids


def files(spool: Spool, state: MessageState) -> list[str]:
    return os.listdir(spool.directory / state.value)


async def test_concurrent_removals_share_hops_and_all_happen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, ids = await claimed_spool(tmp_path)
    hops: list[int] = []
    real = spool_module.remove_claimed_messages

    def counted(layout: object, message_ids: list[str]) -> dict[str, OSError]:
        hops.append(len(message_ids))
        return real(layout, message_ids)  # type: ignore[arg-type]

    monkeypatch.setattr(spool_module, "remove_claimed_messages", counted)
    async with trio.open_nursery() as nursery:
        for message_id in ids:
            nursery.start_soon(spool.remove, message_id)
    assert sum(hops) == MESSAGES
    assert len(hops) < MESSAGES  # the ones that waited went together
    assert files(spool, MessageState.PROCESSING) == []
    assert spool.counts().total == 0


async def test_one_failed_removal_is_its_callers_alone(tmp_path: Path) -> None:
    spool, ids = await claimed_spool(tmp_path)
    gone = ids[7]
    for name in files(spool, MessageState.PROCESSING):  # removed behind the spool's back
        if name.startswith(gone):
            os.unlink(spool.directory / "processing" / name)
    failures: dict[str, Exception] = {}

    async def remove(message_id: str) -> None:
        try:
            await spool.remove(message_id)
        except SpoolWriteError as exc:
            failures[message_id] = exc

    async with trio.open_nursery() as nursery:
        for message_id in ids:
            nursery.start_soon(remove, message_id)
    assert list(failures) == [gone]
    assert f"could not remove message {gone}" in str(failures[gone])
    assert files(spool, MessageState.PROCESSING) == []
    assert [e.id for e in spool.entries()] == [gone]  # still indexed: its caller decides


async def test_a_cancelled_caller_still_gets_its_message_removed(tmp_path: Path) -> None:
    spool, ids = await claimed_spool(tmp_path)
    with trio.CancelScope() as scope:
        scope.cancel()
        await spool.remove(ids[0])  # shielded: done despite the cancel,
        await trio.lowlevel.checkpoint()  # which lands at the caller's next checkpoint
    assert scope.cancelled_caught
    assert ids[0] not in {e.id for e in spool.entries()}
    assert not [n for n in files(spool, MessageState.PROCESSING) if n.startswith(ids[0])]
