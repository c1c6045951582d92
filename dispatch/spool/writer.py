"""The atomic write path: one message being received, from first chunk to commit or abort.

Theory of operation
-------------------
Intake (the SMTP ``DATA`` phase or an API request body) feeds the raw bytes to an
:class:`IncomingMessage` as they arrive. Chunks are kept in memory until
:data:`SPILL_THRESHOLD` bytes are buffered; then they are appended to ``tmp/<id>.eml`` in a
worker thread. A typical 5 KiB message therefore costs exactly one thread hop — the commit —
and a 25 MiB message is never held whole in memory nor joined into one string.

:meth:`IncomingMessage.commit` does all remaining file work in one thread hop, in this order::

    1. write the rest of the bytes to tmp/<id>.eml, attach the envelope to it as an
       extended attribute (layout.ENVELOPE_XATTR), fsync it
    2. rename tmp/<id>.eml -> incoming/<id>.eml      (the commit point)
    3. fsync incoming/

and returns only after step 3, so the caller may answer ``250``/``202``: two fsyncs per
message. A crash before step 2 leaves nothing in a state directory (start-up empties
``tmp/``); a crash after it leaves a complete message, which will be delivered.

Where the spool's file system makes a rename durable with the renamed file's own fsync
(ext4, XFS, btrfs: ``durability.py``), steps 1 to 3 become one fsync::

    1. write the rest of the bytes to tmp/<id>.eml, attach the envelope
    2. rename tmp/<id>.eml -> incoming/<id>.eml
    3. fsync the file                                  (the commit point)

A power cut between 2 and 3 can leave ``incoming/<id>.eml`` shorter than its envelope's
``size`` (its data never reached the disk): that message was never acknowledged, and start-up
sets it aside in ``orphaned/`` rather than delivering it torn (``recovery.py``). A killed
process loses nothing here: the kernel holds the written file either way.

Where the attribute cannot be set (a file system without user extended attributes, or an
envelope too long for one), the envelope goes to its own file as earlier versions always
did, one fsync more::

    1. write the rest to tmp/<id>.eml, fsync it;  write tmp/<id>.json, fsync it
    2. rename tmp/<id>.eml -> incoming/<id>.eml
    3. rename tmp/<id>.json -> incoming/<id>.json   (the commit point)
    4. fsync incoming/

A crash between 2 and 3 leaves an ``.eml`` without an envelope, which start-up sets aside
in ``orphaned/`` (``recovery.py``).

If any step fails, everything this message put in ``tmp/`` or ``incoming/`` is removed
before the error is raised: :class:`SpoolFullError` for ENOSPC/EDQUOT, otherwise
:class:`SpoolWriteError`.

Cancellation
------------
A thread cannot be interrupted, and half of a commit is worse than none, so the thread hops
of :meth:`~IncomingMessage.write`, :meth:`~IncomingMessage.commit` and
:meth:`~IncomingMessage.abort` always run to their end (``thread_hop.py``): a cancelled
task finishes the hop and gets :class:`trio.Cancelled` at its next checkpoint. For
``commit`` that means the message may be durably spooled although the caller never sends
its ``250``: the client retries and the message is delivered twice. A duplicate, never a
loss and never a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import trio

from dispatch.smtp.dsn import MailDsn, RcptDsn
from dispatch.spool.envelope import NO_MAIL_DSN, Envelope, Source
from dispatch.spool.errors import SpoolError, translate_os_error
from dispatch.spool.ids import new_id
from dispatch.spool.layout import (
    EML,
    FILE_MODE,
    JSON,
    MessageState,
    SpoolLayout,
    attach_envelope,
    fsync_dir,
    unlink_quietly,
    write_all,
    write_new_file,
)
from dispatch.spool.thread_hop import run_to_completion

# Below this many buffered bytes a message stays in memory. 1 MiB covers nearly all real
# mail in one commit hop while bounding the memory of each concurrent session.
SPILL_THRESHOLD: Final = 1 << 20

_Phase = Literal["receiving", "busy", "committed", "aborted"]


type OnCommit = Callable[[Envelope, bytes], None]
"""Called with each envelope once its message is durable, and the envelope's JSON as the
commit wrote it (:meth:`Envelope.to_json`), so that a caller passing it on need not encode it
again."""


class IncomingMessage:
    """One message being received into the spool; owns its buffer and its ``tmp/`` file.

    Created by :meth:`Spool.begin`; ends with exactly one :meth:`commit` or :meth:`abort`.
    Use it as ``async with spool.begin() as message:`` so that an exception or cancellation
    before the commit aborts it and removes the temporary file. Not safe for concurrent use
    by two tasks (intake owns it for the length of one transaction).
    """

    def __init__(
        self,
        layout: SpoolLayout,
        message_id: str,
        *,
        limiter: trio.CapacityLimiter,
        on_commit: OnCommit,
        spill_threshold: int = SPILL_THRESHOLD,
    ) -> None:
        self.id: Final = message_id
        self._layout = layout
        self._limiter = limiter
        self._on_commit = on_commit
        self._spill_threshold = spill_threshold
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._fd: int | None = None  # tmp/<id>.eml, open for appending once spilled
        self._phase: _Phase = "receiving"

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return self._size

    @property
    def spilled(self) -> bool:
        """Whether part of the message already lives in ``tmp/`` rather than memory."""
        return self._fd is not None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the message; may write buffered bytes to ``tmp/``.

        Raises :class:`SpoolFullError` / :class:`SpoolWriteError` if spilling fails; the
        message is then aborted (its temporary file removed) and cannot be committed.
        """
        self._require_receiving("write to")
        if data:
            chunk = bytes(data)  # the caller may reuse its buffer
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            self._size += len(chunk)
        if self._buffered >= self._spill_threshold:
            await self._spill()
        else:
            await trio.lowlevel.checkpoint()

    async def commit(
        self,
        *,
        mail_from: str,
        recipients: Iterable[str],
        source: Source,
        peer_ip: str | None,
        auth_identity: str | None = None,
        tags: Iterable[str] = (),
        received_at: float | None = None,
        mail_dsn: MailDsn = NO_MAIL_DSN,
        recipient_dsn: Mapping[str, RcptDsn] | None = None,
    ) -> Envelope:
        """Write the message and its envelope durably into ``incoming/``; return the envelope.

        When this returns, the message survives a crash or power loss and may be
        acknowledged. Its only wait is the thread hop, which runs to its end whatever
        happens, and nothing before or after it is a checkpoint: a cancelled caller (an SMTP
        session at shutdown) gets the envelope and says ``250`` before the cancellation
        lands. Keep it so. The envelope starts with no attempts and is due at once. Invalid
        fields raise :class:`ValueError` before anything is written (the message stays
        open and can still be aborted).
        """
        self._require_receiving("commit")
        now = time.time() if received_at is None else received_at
        envelope = Envelope(
            id=self.id,
            mail_from=mail_from,
            recipients=tuple(recipients),
            source=source,
            peer_ip=peer_ip,
            auth_identity=auth_identity,
            tags=tuple(tags),
            received_at=now,
            size=self._size,
            attempts=0,
            next_attempt_at=now,
            mail_dsn=mail_dsn,
            recipient_dsn=recipient_dsn or {},
        )
        encoded = envelope.to_json()
        work = partial(_commit_sync, self._layout, self.id, self._fd, self._chunks, encoded)
        self._phase = "busy"
        try:
            await run_to_completion(work, self._limiter)
        except OSError as exc:
            self._phase = "aborted"
            raise translate_os_error(exc, f"write message {self.id}") from exc
        except BaseException:
            self._phase = "aborted"
            raise
        finally:
            self._fd = None  # closed by _commit_sync in every case
            self._chunks = []
        self._phase = "committed"
        self._on_commit(envelope, encoded)
        return envelope

    async def abort(self) -> None:
        """Discard the message and its temporary file. Idempotent; a no-op after commit."""
        if self._phase in ("committed", "aborted"):
            await trio.lowlevel.checkpoint()
            return
        self._phase = "aborted"
        self._chunks = []
        fd, self._fd = self._fd, None
        if fd is None:
            await trio.lowlevel.checkpoint()
            return
        work = partial(_discard_sync, fd, self._layout.tmp_path(self.id, EML))
        await run_to_completion(work, self._limiter)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.abort()

    async def _spill(self) -> None:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        work = partial(_spill_sync, self._layout.tmp_path(self.id, EML), self._fd, chunks)
        self._phase = "busy"
        try:
            self._fd = await run_to_completion(work, self._limiter)
        except OSError as exc:
            self._phase = "aborted"
            self._fd = None  # _spill_sync closed it and removed the file
            raise translate_os_error(exc, f"write message {self.id}") from exc
        except BaseException:
            self._phase = "aborted"
            self._fd = None
            raise
        self._phase = "receiving"

    def _require_receiving(self, action: str) -> None:
        if self._phase == "receiving":
            return
        if self._phase == "busy":
            raise RuntimeError(f"message {self.id}: another task is writing it")
        raise SpoolError(f"cannot {action} message {self.id}: it is already {self._phase}")


def _spill_sync(path: str, fd: int | None, chunks: list[bytes]) -> int:
    """Append ``chunks`` to the temporary body file (creating it); return its descriptor.

    On failure the descriptor is closed and the file removed before the error propagates.
    """
    if fd is None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        write_all(fd, chunks)
    except BaseException:
        _discard_sync(fd, path)
        raise
    return fd


def _discard_sync(fd: int, path: str) -> None:
    try:
        os.close(fd)
    finally:
        unlink_quietly(path)


def _commit_sync(
    layout: SpoolLayout, message_id: str, fd: int | None, chunks: list[bytes], envelope: bytes
) -> None:
    """The steps of the module docstring, undoing all of them if any fails. Closes ``fd``."""
    incoming_dir = layout.state_dir_strings[MessageState.INCOMING]
    eml_tmp = layout.tmp_path(message_id, EML)
    json_tmp = layout.tmp_path(message_id, JSON)
    eml_final = layout.path(MessageState.INCOMING, message_id, EML)
    renamed: list[str] = []
    try:
        if fd is None:
            fd = os.open(eml_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            write_all(fd, chunks)
            one_file = attach_envelope(fd, envelope)
            if one_file and layout.file_fsync_covers_rename:
                os.rename(eml_tmp, eml_final)
                renamed.append(eml_final)
            os.fsync(fd)
        finally:
            os.close(fd)
        if renamed:
            return  # that fsync made the rename durable too
        moves = [(eml_tmp, eml_final)]
        if not one_file:
            write_new_file(json_tmp, (envelope,))
            # the envelope last: its arrival is the commit
            moves.append((json_tmp, layout.path(MessageState.INCOMING, message_id, JSON)))
        for tmp, final in moves:
            os.rename(tmp, final)
            renamed.append(final)
        fsync_dir(incoming_dir)
    except BaseException:
        # Envelope first: without it the pair is never a message, even if the rest of the
        # cleanup fails (start-up then sets the envelope-less body aside).
        for path in reversed(renamed):
            unlink_quietly(path)
        unlink_quietly(eml_tmp)
        unlink_quietly(json_tmp)
        if renamed:
            with contextlib.suppress(OSError):
                fsync_dir(incoming_dir)
        raise


class SpoolEntrance:
    """Where a process that does not own the spool starts messages: an intake worker.

    Writes only into ``tmp/`` and ``incoming/`` exactly as :meth:`Spool.begin` does;
    ``on_commit`` is called with each committed envelope and its JSON as written (the worker
    announces it to the main process, whose :class:`Spool` indexes it). No background task,
    nothing to close.
    """

    def __init__(
        self,
        directory: Path,
        on_commit: OnCommit,
        *,
        limiter: trio.CapacityLimiter,
    ) -> None:
        self._layout = SpoolLayout(directory)
        self._on_commit = on_commit
        self._limiter = limiter

    def begin(self) -> IncomingMessage:
        return IncomingMessage(
            self._layout, new_id(), limiter=self._limiter, on_commit=self._on_commit
        )
