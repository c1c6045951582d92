"""The atomic write path: what intake hands over is on disk, whole, before commit returns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from dispatch.spool import (
    SPILL_THRESHOLD,
    Envelope,
    MessageState,
    Spool,
    SpoolError,
    SpoolWriteError,
)
from dispatch.spool.layout import ENVELOPE_XATTR, write_all
from dispatch.spool.testing import commit, placed, tmp_files


@pytest.fixture
async def spool(tmp_path: Path) -> Spool:
    return await Spool.open(tmp_path / "spool")


async def test_commit_puts_one_file_with_its_envelope_in_incoming(spool: Spool) -> None:
    body = b"From: a@example.test\r\nSubject: t\r\n\r\n" + os.urandom(5000) + b"\r\n"
    async with spool.begin() as message:
        for i in range(0, len(body), 100):  # many small chunks, like DATA lines
            await message.write(body[i : i + 100])
        assert not message.spilled  # a small message costs no thread hop before commit
        envelope = await message.commit(
            mail_from="a@example.test",
            recipients=["b@example.test", "c@example.test"],
            source="smtp",
            peer_ip="192.0.2.1",
            auth_identity="alice",
            tags=["t1"],
        )
    root = spool.directory
    eml = root / "incoming" / f"{envelope.id}.eml"
    assert eml.read_bytes() == body
    assert Envelope.from_json(os.getxattr(eml, ENVELOPE_XATTR)) == envelope
    assert not (root / "incoming" / f"{envelope.id}.json").exists()
    assert envelope.size == len(body)
    assert envelope.recipients == ("b@example.test", "c@example.test")
    assert envelope.attempts == 0
    assert envelope.next_attempt_at == envelope.received_at
    assert placed(root) == {envelope.id: MessageState.INCOMING}
    assert tmp_files(root) == []
    counts = spool.counts()
    assert (counts.incoming, counts.processing, counts.failed, counts.total_bytes) == (
        1,
        0,
        0,
        len(body),
    )
    assert spool.get(envelope.id).envelope == envelope
    assert spool.message_path(envelope.id) == eml
    assert oct(eml.stat().st_mode & 0o777) == oct(0o600)
    assert oct((root / "incoming").stat().st_mode & 0o777) == oct(0o700)


async def test_large_message_spills_to_tmp_and_ends_byte_identical(spool: Spool) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    root = spool.directory
    async with spool.begin() as message:
        for i in range(0, len(body), 64 * 1024):
            await message.write(memoryview(body)[i : i + 64 * 1024])
            if message.size >= SPILL_THRESHOLD:
                assert message.spilled
                assert tmp_files(root) == [f"{message.id}.eml"]
        envelope = await message.commit(
            mail_from="", recipients=["x@example.test"], source="api", peer_ip=None
        )
    assert (root / "incoming" / f"{envelope.id}.eml").read_bytes() == body
    assert envelope.size == len(body)
    assert tmp_files(root) == []


async def test_writer_copies_chunks_so_callers_may_reuse_buffers(spool: Spool) -> None:
    buffer = bytearray(b"first line\r\n")
    async with spool.begin() as message:
        await message.write(buffer)
        buffer[:] = b"XXXXX XXXX\r\n"
        await message.write(b"")
        envelope = await message.commit(
            mail_from="a@x.test", recipients=["b@x.test"], source="smtp", peer_ip="::1"
        )
    assert spool.message_path(envelope.id).read_bytes() == b"first line\r\n"


async def test_abort_removes_the_spilled_file(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool", spill_threshold=1000)
    message = spool.begin()
    await message.write(b"x" * 5000)
    assert tmp_files(spool.directory) == [f"{message.id}.eml"]
    await message.abort()
    await message.abort()  # idempotent
    assert tmp_files(spool.directory) == []
    assert placed(spool.directory) == {}
    with pytest.raises(SpoolError, match="already aborted"):
        await message.write(b"more")


async def test_an_exception_inside_async_with_aborts(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool", spill_threshold=10)

    async def receive_until_the_client_goes_away() -> None:
        async with spool.begin() as message:
            await message.write(b"0123456789abc")
            raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        await receive_until_the_client_goes_away()
    assert tmp_files(spool.directory) == []
    assert spool.counts().total == 0


async def test_invalid_envelope_fields_write_nothing(spool: Spool) -> None:
    async with spool.begin() as message:
        await message.write(b"body")
        with pytest.raises(ValueError, match="at least one recipient"):
            await message.commit(mail_from="a@x.test", recipients=[], source="smtp", peer_ip=None)
    assert placed(spool.directory) == {}
    assert tmp_files(spool.directory) == []


async def test_a_message_commits_once(spool: Spool) -> None:
    async with spool.begin() as message:
        await message.write(b"body")
        await message.commit(
            mail_from="a@x.test", recipients=["b@x.test"], source="api", peer_ip=None
        )
        with pytest.raises(SpoolError, match="already committed"):
            await message.commit(
                mail_from="a@x.test", recipients=["b@x.test"], source="api", peer_ip=None
            )
    assert spool.counts().incoming == 1


async def test_write_error_leaves_nothing_half_written(spool: Spool) -> None:
    # incoming/ replaced by a file: the rename fails with ENOTDIR, a non-space error.
    incoming = spool.directory / "incoming"
    incoming.rmdir()
    incoming.write_bytes(b"")
    with pytest.raises(SpoolWriteError, match="could not write message") as caught:
        await commit(spool, b"x" * 3000)
    assert type(caught.value) is SpoolWriteError
    assert tmp_files(spool.directory) == []
    assert spool.counts().total == 0


async def test_cancelled_commit_completes_and_the_cancel_arrives_afterwards(spool: Spool) -> None:
    async with spool.begin() as message:
        await message.write(b"body\r\n")
        committed: list[Envelope] = []
        with trio.CancelScope() as scope:
            scope.cancel()
            committed.append(
                await message.commit(
                    mail_from="a@x.test", recipients=["b@x.test"], source="smtp", peer_ip=None
                )
            )
            await trio.lowlevel.checkpoint()  # here the caller learns it was cancelled
            pytest.fail("not cancelled")
        assert scope.cancelled_caught
    # Never acknowledged but durably spooled: a possible duplicate, never a loss.
    (envelope,) = committed
    assert placed(spool.directory) == {envelope.id: MessageState.INCOMING}
    assert spool.counts().incoming == 1


async def test_concurrent_commits_each_land_whole(spool: Spool) -> None:
    bodies = {i: os.urandom(1000 + i) for i in range(40)}
    ids: dict[int, str] = {}

    async def one(i: int) -> None:
        ids[i] = (await commit(spool, bodies[i], chunk_size=300)).id

    async with trio.open_nursery() as nursery:
        for i in bodies:
            nursery.start_soon(one, i)
    assert len(placed(spool.directory)) == 40
    for i, message_id in ids.items():
        assert spool.message_path(message_id).read_bytes() == bodies[i]
    assert spool.counts().incoming == 40


def test_write_all_carries_on_after_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # writev(2) may take less than it is given (a signal, a full disk's last blocks): each
    # call here hands the real one at most 7 bytes, so writes stop inside chunks, at their
    # ends, and across empty ones.
    real_writev = os.writev

    def short_writev(fd: int, buffers: list[bytes | memoryview]) -> int:
        return real_writev(fd, [b"".join(bytes(buffer) for buffer in buffers)[:7]])

    monkeypatch.setattr(os, "writev", short_writev)
    chunks = [b"Received: x\r\n", b"", b"abc", b"0123456789" * 5, b"", b"."]
    path = tmp_path / "message.eml"
    with path.open("wb") as file:
        write_all(file.fileno(), chunks)
    assert path.read_bytes() == b"".join(chunks)


def test_write_all_writes_every_chunk_in_order(tmp_path: Path) -> None:
    # More chunks than one writev(2) takes (IOV_MAX, 1024 on Linux), empty ones among them.
    chunks = [bytes([i % 251]) * (i % 97) for i in range(2500)]
    path = tmp_path / "message.eml"
    with path.open("wb") as file:
        write_all(file.fileno(), chunks)
    assert path.read_bytes() == b"".join(chunks)
