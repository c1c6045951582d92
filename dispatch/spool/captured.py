"""Reading the Local inbox (``<spool>/captured/``): the copies the ``local`` relay made.

Captured mail is not in the spool's index (the ``local`` relay delivered it), so whoever
shows it — ``spool list --state captured``, ``spool show``, ``/debug/queue?state=captured`` —
reads the folder. A copy is whole once its envelope exists (the relay writes the envelope
last), and its time is the envelope's modification time. Reading happens in a worker thread
(:func:`captured_copies`); the functions without ``async`` block.

:func:`delete_captured` removes copies an operator deleted (the dashboard's Local inbox):
envelope first, as the spool removes a message, so a copy is never listed without its body.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Final

import attrs
import trio

from dispatch.spool.envelope import Envelope
from dispatch.spool.errors import CorruptEnvelopeError
from dispatch.spool.ids import is_valid_id
from dispatch.spool.layout import EML, JSON, fsync_dir

DELETE_BATCH: Final = 200
"""Copies removed per thread hop: a few milliseconds of unlinks, so deleting a whole inbox
never holds a worker thread for long and can be cancelled between batches."""


@attrs.frozen
class CapturedCopy:
    """One message in the Local inbox: its envelope (as it was when captured), when the copy
    was made, and the path of its body."""

    envelope: Envelope
    captured_at: float
    path: Path


@attrs.frozen
class CapturedListing:
    """The newest copies of the Local inbox, oldest first, and how many there are in all;
    ``unreadable`` counts envelopes among the newest that could not be read."""

    directory: Path
    total: int
    unreadable: int
    copies: tuple[CapturedCopy, ...]


def read_captured(directory: Path, message_id: str) -> CapturedCopy | None:
    """Blocking: one captured copy; None if it is not there.

    Raises ``OSError`` or :class:`~dispatch.spool.errors.CorruptEnvelopeError` when its
    envelope cannot be read.
    """
    path = directory / f"{message_id}{JSON}"
    try:
        envelope = Envelope.from_json(path.read_bytes(), path=path)
        captured_at = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return CapturedCopy(envelope, captured_at, directory / f"{message_id}{EML}")


def list_captured(directory: Path, limit: int) -> CapturedListing:
    """Blocking: the newest ``limit`` captured copies (a listing of names, then ``limit``
    envelopes read). Ids sort in arrival order."""
    ids = captured_ids(directory)
    copies: list[CapturedCopy] = []
    unreadable = 0
    for message_id in ids[-limit:] if limit > 0 else ():
        try:
            copy = read_captured(directory, message_id)
        except (OSError, CorruptEnvelopeError):
            unreadable += 1
            continue
        if copy is not None:  # None: purged since the listing
            copies.append(copy)
    return CapturedListing(directory, len(ids), unreadable, tuple(copies))


async def captured_copies(directory: Path, limit: int) -> CapturedListing:
    """:func:`list_captured` in a worker thread (the event loop never lists a directory)."""
    return await trio.to_thread.run_sync(partial(list_captured, directory, limit))


def captured_ids(directory: Path) -> list[str]:
    """Blocking: the ids of every copy with an envelope, in arrival order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    stems = (name[: -len(JSON)] for name in names if name.endswith(JSON))
    return sorted(stem for stem in stems if is_valid_id(stem))


def _delete_batch(directory: Path, message_ids: Sequence[str]) -> int:
    removed = 0
    try:
        for message_id in message_ids:
            try:
                (directory / f"{message_id}{JSON}").unlink()
            except FileNotFoundError:
                continue  # gone already (retention, another delete)
            (directory / f"{message_id}{EML}").unlink(missing_ok=True)
            removed += 1
    finally:
        if removed:
            with contextlib.suppress(OSError):  # a lost unlink comes back; delete it again
                fsync_dir(directory)
    return removed


async def delete_captured(directory: Path, message_ids: Sequence[str] | None) -> int:
    """Remove these captured copies (``None``: every one); return how many were removed.

    Raises ``ValueError`` naming an id that is not a spool message id (nothing else is ever
    touched), and ``OSError`` if the folder cannot be changed (copies removed until then stay
    removed). Worker threads, :data:`DELETE_BATCH` copies per hop.
    """
    if message_ids is None:
        message_ids = await trio.to_thread.run_sync(captured_ids, directory)
    for message_id in message_ids:
        if not is_valid_id(message_id):
            raise ValueError(f"{message_id!r} is not a captured message id (spl_...)")
    removed = 0
    for start in range(0, len(message_ids), DELETE_BATCH):
        batch = message_ids[start : start + DELETE_BATCH]
        removed += await trio.to_thread.run_sync(_delete_batch, directory, batch)
    return removed
