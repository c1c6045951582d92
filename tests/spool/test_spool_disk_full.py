"""A real full disk: a tiny tmpfs. The spool says "full", leaves nothing behind, and recovers.

Mounting needs root, which CI has. Without it these tests fail (not skip): a spool whose
disk-full path was never exercised must not pass as tested.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatch.spool import MessageState, Spool, SpoolFullError
from dispatch.spool.layout import MAX_XATTR_ENVELOPE
from dispatch.spool.testing import commit, placed, tmp_files
from tests.conftest import FS_SIZE, fill


def assert_nothing_half_written(spool: Spool, expected: dict[str, MessageState]) -> None:
    assert tmp_files(spool.directory) == []
    assert placed(spool.directory) == expected
    assert {e.id: e.state for e in spool.entries()} == expected


async def test_message_bigger_than_the_disk_is_refused_cleanly(small_fs: Path) -> None:
    spool = await Spool.open(small_fs / "spool")
    first = await commit(spool, b"small\r\n")
    with pytest.raises(SpoolFullError, match=r"spool is full, could not write message spl_"):
        await commit(spool, os.urandom(FS_SIZE + 10_000))
    assert_nothing_half_written(spool, {first.id: MessageState.INCOMING})
    second = await commit(spool, b"x" * 10_000)
    assert spool.message_path(second.id).read_bytes() == b"x" * 10_000


async def test_spilling_into_a_full_disk_aborts_the_message(small_fs: Path) -> None:
    spool = await Spool.open(small_fs / "spool", spill_threshold=64 * 1024)

    async def receive_twice_the_disk() -> None:
        async with spool.begin() as message:
            for _ in range(2 * FS_SIZE // 4096):
                await message.write(b"y" * 4096)

    with pytest.raises(SpoolFullError):
        await receive_twice_the_disk()
    assert_nothing_half_written(spool, {})
    await commit(spool, b"y" * 100_000)  # the space came back


async def test_disk_full_between_body_and_envelope_then_space_freed(small_fs: Path) -> None:
    spool = await Spool.open(small_fs / "spool")
    filler = small_fs / "filler"
    # An envelope too long for an attribute gets its own .json. One free page: the body
    # fits, the envelope does not — the failure is mid-commit.
    many = [f"recipient-{n}@example.test" for n in range(200)]
    assert len((await commit(spool, recipients=many)).to_json()) > MAX_XATTR_ENVELOPE
    fill(filler, leave_pages=1)
    with pytest.raises(SpoolFullError):
        await commit(spool, b"z" * 100, recipients=many)
    assert len(placed(spool.directory)) == 1
    assert tmp_files(spool.directory) == []

    filler.unlink()  # the operator frees space
    envelope = await commit(spool, b"z" * 100, recipients=many)
    assert len(placed(spool.directory)) == 2
    assert (spool.directory / "incoming" / f"{envelope.id}.json").exists()


async def test_one_file_commit_on_a_full_disk_leaves_nothing(small_fs: Path) -> None:
    spool = await Spool.open(small_fs / "spool")
    filler = small_fs / "filler"
    fill(filler, leave_pages=0)
    with pytest.raises(SpoolFullError):
        await commit(spool, b"z" * 5000)
    assert_nothing_half_written(spool, {})
    filler.unlink()
    envelope = await commit(spool, b"z" * 5000)
    assert_nothing_half_written(spool, {envelope.id: MessageState.INCOMING})
    assert not (spool.directory / "incoming" / f"{envelope.id}.json").exists()


async def test_state_change_on_a_full_disk_keeps_the_message_whole(small_fs: Path) -> None:
    spool = await Spool.open(small_fs / "spool")
    envelope = await commit(spool, b"body")
    await spool.claim(envelope.id)  # renames need no space
    fill(small_fs / "filler", leave_pages=0)
    with pytest.raises(SpoolFullError):
        await spool.release(envelope.after_attempt(next_attempt_at=0.0, error="421"))
    assert_nothing_half_written(spool, {envelope.id: MessageState.PROCESSING})
    (small_fs / "filler").unlink()
    await spool.release(envelope.after_attempt(next_attempt_at=0.0, error="421"))
    assert_nothing_half_written(spool, {envelope.id: MessageState.INCOMING})
