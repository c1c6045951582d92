"""Age sweeps of the spool for retention: failed messages and captured mail past their time.

The retention component (``dispatch/retention.py``) decides how old is too old; this module
knows where the files are and how to remove them without breaking the spool's rules.

* **failed/**: these messages are in the spool's index, so they are deleted through
  :meth:`Spool.delete` (envelope first, index updated, never while another operation holds
  the message). A message's age is the modification time of its envelope, i.e. when the
  envelope was last written: normally when delivery gave up on it.
* **orphaned/**: bodies start-up recovery found without any envelope and set aside
  (``recovery.py``); swept with failed/ under the same age. Not indexed; a body's age is its
  change time, which the rename into ``orphaned/`` set. Only names recovery gives
  (``<spool id>.eml``, ``<spool id>.<n>.eml``) are removed.
* **captured/** (the Local inbox): not indexed; a copy's age is the modification time of its
  envelope, which the ``local`` relay writes last (``spool list --state captured`` shows the
  same time as ``captured_at``). A body without an envelope is an interrupted capture: it is
  removed only when both its modification and change times are old, because a capture in
  progress links a body (of any age) just before it writes the envelope, and the link is what
  sets the change time.

Every file operation runs in a worker thread, :data:`SWEEP_BATCH` messages per thread hop, so
a sweep of many thousands of files never blocks the event loop and can be cancelled between
batches. A sweep stops at its first file-system error (the next files would most likely fail
the same way) and reports what it removed until then; the next run goes on from there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Final

import attrs
import trio

from dispatch.spool.envelope import Envelope
from dispatch.spool.errors import (
    MessageBusyError,
    SpoolError,
    UnknownMessageError,
    WrongStateError,
)
from dispatch.spool.ids import is_valid_id
from dispatch.spool.layout import EML, JSON, MessageState, SpoolLayout, fsync_dir
from dispatch.spool.spool import Spool

logger = logging.getLogger("dispatch.spool")

SWEEP_BATCH: Final = 200
"""Messages looked at (stat) or removed per thread hop: a few milliseconds of file work, so a
cancelled sweep stops quickly and the thread pool is never held for long."""


@attrs.frozen
class SweepResult:
    """How many messages a sweep removed, and the error that stopped it (None: it finished)."""

    removed: int
    error: str | None = None


class SpoolSweeper:
    """Removes old failed messages and old captured mail from one spool.

    Owns nothing: the spool owns ``failed/`` (deletions go through it) and the files of
    ``captured/`` are removed directly. Only the Trio thread may call its methods.
    Cancellation stops a sweep between two thread hops; a hop in progress finishes first.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._layout = SpoolLayout(spool.directory)

    async def remove_failed(self, older_than: float) -> SweepResult:
        """Delete failed messages whose envelope was last written before ``older_than``
        (Unix time). One retried, deleted or changed meanwhile is left alone."""
        listed = {e.id: e.envelope for e in self._spool.entries(MessageState.FAILED)}
        removed = 0
        for batch in _batches(sorted(listed)):
            try:
                old = await trio.to_thread.run_sync(
                    partial(_failed_before, self._layout, batch, older_than)
                )
            except OSError as exc:
                return SweepResult(removed, f"cannot read {self._layout.root}/failed: {exc}")
            for message_id in old:
                if not self._unchanged(message_id, listed[message_id]):
                    continue
                try:
                    await self._spool.delete(message_id)
                except (MessageBusyError, UnknownMessageError, WrongStateError):
                    continue  # taken by an operator's retry or delete
                except SpoolError as exc:
                    return SweepResult(removed, str(exc))
                removed += 1
        orphans = await self._remove_orphaned(older_than)
        return attrs.evolve(orphans, removed=removed + orphans.removed)

    async def _remove_orphaned(self, older_than: float) -> SweepResult:
        """Delete the bodies in ``orphaned/`` set aside before ``older_than`` (Unix time)."""
        directory = self._layout.orphaned
        result = await _remove_old(directory, older_than, _orphans_before, _remove_orphans)
        if result.removed:
            logger.info("spool: removed %d set-aside bodies from %s", result.removed, directory)
        return result

    def _unchanged(self, message_id: str, envelope: Envelope) -> bool:
        """Still failed with the envelope that was dated (a retry that failed again makes a
        new envelope, whose file is younger than the one that was looked at)."""
        try:
            entry = self._spool.get(message_id)
        except UnknownMessageError:
            return False
        return entry.state is MessageState.FAILED and entry.envelope is envelope

    async def remove_captured(self, older_than: float) -> SweepResult:
        """Delete captured copies (envelope and body) older than ``older_than`` (Unix time)."""
        return await _remove_old(
            self._layout.captured, older_than, _captured_before, _remove_captured
        )


async def _remove_old(
    directory: Path,
    older_than: float,
    list_old: Callable[[Path, float], list[str]],
    remove: Callable[[Path, Sequence[str], float], tuple[int, OSError | None]],
) -> SweepResult:
    """List what in ``directory`` is older than ``older_than``, then remove it in batches,
    each batch one worker-thread hop (``remove`` checks each name's age again)."""
    try:
        old = await trio.to_thread.run_sync(partial(list_old, directory, older_than))
    except OSError as exc:
        return SweepResult(0, f"cannot list {directory}: {exc}")
    removed = 0
    for batch in _batches(old):
        count, error = await trio.to_thread.run_sync(partial(remove, directory, batch, older_than))
        removed += count
        if error is not None:
            return SweepResult(removed, f"cannot remove from {directory}: {error}")
    return SweepResult(removed)


def _batches(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + SWEEP_BATCH] for i in range(0, len(items), SWEEP_BATCH)]


def _failed_before(layout: SpoolLayout, message_ids: Sequence[str], before: float) -> list[str]:
    """Blocking: those of ``message_ids`` whose ``failed/`` envelope is older than ``before``."""
    old = []
    for message_id in message_ids:
        try:
            written = os.stat(layout.path(MessageState.FAILED, message_id, JSON)).st_mtime
        except FileNotFoundError:
            try:  # a one-file message (layout.py): its rename into failed/ set the ctime
                written = os.stat(layout.path(MessageState.FAILED, message_id, EML)).st_ctime
            except FileNotFoundError:
                continue  # moved since the index was read
        if written < before:
            old.append(message_id)
    return old


def _captured_age(directory: Path, message_id: str) -> float | None:
    """Blocking: when a captured copy was made (see the module docstring); None if gone."""
    try:
        return (directory / f"{message_id}{JSON}").stat().st_mtime
    except FileNotFoundError:
        pass
    try:
        body = (directory / f"{message_id}{EML}").stat()
    except FileNotFoundError:
        return None
    return max(body.st_mtime, body.st_ctime)


def _captured_before(directory: Path, before: float) -> list[str]:
    """Blocking: ids of the captured copies older than ``before``, in arrival order.

    Names that are not ``<spool id>.eml`` or ``<spool id>.json`` are never touched.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    ids = {
        stem
        for stem, dot, suffix in (name.rpartition(".") for name in names)
        if dot and f".{suffix}" in (EML, JSON) and is_valid_id(stem)
    }
    old = []
    for message_id in sorted(ids):
        made = _captured_age(directory, message_id)
        if made is not None and made < before:
            old.append(message_id)
    return old


def _remove_captured(
    directory: Path, message_ids: Sequence[str], before: float
) -> tuple[int, OSError | None]:
    """Blocking: remove these captured copies, envelope first (as the spool removes a
    message), then make the removals durable; return how many, and the error that stopped it.

    The age is checked again right before: a copy captured again since the listing has a
    fresh envelope and stays.
    """
    removed = 0
    try:
        for message_id in message_ids:
            made = _captured_age(directory, message_id)
            if made is None or made >= before:
                continue
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{message_id}{JSON}").unlink()
            (directory / f"{message_id}{EML}").unlink(missing_ok=True)
            removed += 1
    except OSError as exc:
        return removed, exc
    finally:
        if removed:
            # Unlinks that are lost in a power cut come back and go at the next run.
            with contextlib.suppress(OSError):
                fsync_dir(directory)
    return removed, None


def _is_orphan_name(name: str) -> bool:
    stem, dot, suffix = name.rpartition(".")
    if not dot or f".{suffix}" != EML:
        return False
    message_id, dot, copy = stem.rpartition(".")
    if dot and copy.isdigit():
        stem = message_id
    return is_valid_id(stem)


def _orphans_before(directory: Path, before: float) -> list[str]:
    """Blocking: names of the set-aside bodies in ``directory`` older than ``before``."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []  # nothing was ever set aside
    old = []
    for name in sorted(filter(_is_orphan_name, names)):
        with contextlib.suppress(FileNotFoundError):
            if (directory / name).stat().st_ctime < before:
                old.append(name)
    return old


def _remove_orphans(
    directory: Path, names: Sequence[str], before: float
) -> tuple[int, OSError | None]:
    """Blocking: remove these set-aside bodies (each still old), then fsync the directory."""
    removed = 0
    try:
        for name in names:
            path = directory / name
            try:
                if path.stat().st_ctime >= before:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
    except OSError as exc:
        return removed, exc
    finally:
        if removed:
            with contextlib.suppress(OSError):
                fsync_dir(directory)
    return removed, None
