"""Reading the Local inbox (``<spool>/captured/``): the copies the ``local`` relay made.

Captured mail is not in the spool's index (the ``local`` relay delivered it), so whoever
shows it — ``spool list --state captured``, ``spool show``, ``/debug/queue?state=captured`` —
reads the folder. A copy is whole once its envelope exists (the relay writes the envelope
last), and its time is the envelope's modification time. Reading happens in a worker thread
(:func:`captured_copies`); the functions without ``async`` block.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import attrs
import trio

from dispatch.spool.envelope import Envelope
from dispatch.spool.errors import CorruptEnvelopeError
from dispatch.spool.ids import is_valid_id
from dispatch.spool.layout import EML, JSON


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
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        names = []
    stems = (name[: -len(JSON)] for name in names if name.endswith(JSON))
    ids = sorted(stem for stem in stems if is_valid_id(stem))
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
