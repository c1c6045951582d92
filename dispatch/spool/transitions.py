"""The on-disk state changes of a committed message, each a short sequence of renames.

Theory of operation
-------------------
A message's state is the directory holding its ``.json`` — or, for a one-file message (its
envelope an attribute of the ``.eml``: see ``layout.py``), its ``.eml``. Every
function here orders its steps so that a crash between any two of them leaves a disk that
start-up recovery (``recovery.py``) turns into exactly one state, never losing an
acknowledged message:

* **move** (claim, release, mark failed, retry, return a claim)::

      [write tmp/<id>.json, fsync, rename over src/<id>.json]   only if the envelope changes
      rename src/<id>.eml  -> dst/<id>.eml                      a one-file message's
                                                                state changes here
      rename src/<id>.json -> dst/<id>.json                     a pair's state changes here
      fsync dst/, fsync src/                                    unless durable=False;
                                                                a failure is logged only

  The new envelope replaces the old one *in place* before anything moves, so there is never
  more than one ``.json`` per id; a one-file message becomes a pair there (its ``.json``
  renamed into place first, then the attribute removed, so that at every moment one of the
  two holds an envelope). A crash after the ``.eml`` moved but before the ``.json``
  did leaves a split pair; recovery moves the ``.eml`` to where the ``.json`` is, which is
  the old state — as if the move never started. A crash before the in-place replace keeps
  the old envelope: only delivery bookkeeping (attempt count, last error) is lost; a crash
  after it leaves the new envelope in the old state (a retried message still in failed/
  with its error cleared; an operator retries again).

* **remove** (delivered, or deleted by an operator)::

      unlink <state>/<id>.json                                  the message is gone here
      unlink <state>/<id>.eml                                   (for a one-file message:
      fsync <state>/                                            here)

  Envelope first: a crash in between leaves a body without an envelope, which recovery
  sets aside in ``orphaned/`` (it was either never acknowledged or already finished; recovery
  never deletes such a body, because a copy of the spool that dropped extended attributes
  makes the same thing of a waiting one-file message). The other order would
  leave an envelope without a body, which recovery must treat as a damaged message and
  move to ``failed/`` — an alarm for a message that was in fact delivered.

Every function blocks; run them in ``trio.to_thread.run_sync``. They raise ``OSError``;
translating it is the caller's job.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from dispatch.spool.layout import (
    EML,
    JSON,
    MessageState,
    SpoolLayout,
    detach_envelope,
    fsync_dir,
    unlink_quietly,
    write_new_file,
)

logger = logging.getLogger("dispatch.spool")

INCOMING = MessageState.INCOMING
PROCESSING = MessageState.PROCESSING


def replace_envelope(
    layout: SpoolLayout, message_id: str, state: MessageState, envelope: bytes
) -> None:
    """Atomically replace ``<state>/<id>.json`` with ``envelope`` (written and fsynced first).

    A one-file message becomes a pair: once its ``.json`` is in place, the ``.eml``'s
    envelope attribute is removed (see :func:`~dispatch.spool.layout.detach_envelope`).
    """
    tmp = layout.tmp_path(message_id, JSON)
    unlink_quietly(tmp)  # a leftover of an earlier failed attempt
    write_new_file(tmp, (envelope,))
    try:
        os.rename(tmp, layout.path(state, message_id, JSON))
    except BaseException:
        unlink_quietly(tmp)
        raise
    detach_envelope(layout.path(state, message_id, EML))


def move_message(
    layout: SpoolLayout,
    message_id: str,
    src: MessageState,
    dst: MessageState,
    *,
    envelope: bytes | None = None,
    durable: bool = True,
) -> None:
    """Move a message from ``src`` to ``dst``, optionally replacing its envelope on the way.

    If the ``.json`` cannot be moved, the ``.eml`` is moved back (best effort), so a failed
    move normally leaves the message whole in ``src``; a message without a ``.json`` is a
    one-file message, moved whole by the first rename. ``durable=False`` skips the directory
    fsyncs, for moves that recovery would redo anyway (a claim).
    """
    if envelope is not None:
        replace_envelope(layout, message_id, src, envelope)
    src_eml, dst_eml = layout.path(src, message_id, EML), layout.path(dst, message_id, EML)
    os.rename(src_eml, dst_eml)
    try:
        os.rename(layout.path(src, message_id, JSON), layout.path(dst, message_id, JSON))
    except FileNotFoundError:
        pass  # a one-file message: its envelope moved with the .eml
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(dst_eml, src_eml)
        raise
    if durable:
        _fsync_after_move(layout, message_id, dst, src)


def _fsync_after_move(
    layout: SpoolLayout, message_id: str, dst: MessageState, src: MessageState
) -> None:
    """Make a finished move durable; a failure is logged, not raised.

    The renames are done: the message *is* in ``dst``. Raising would leave the caller's index
    saying ``src`` (a released message would stay unclaimable until a restart). Without the
    fsync a power cut may undo the move, which recovery handles like any interrupted move.
    """
    try:
        fsync_dir(layout.state_dir_strings[dst])
        fsync_dir(layout.state_dir_strings[src])
    except OSError as exc:
        logger.warning(
            "message %s: moved to %s/ but the move may not survive a power cut (%s)",
            message_id,
            dst.value,
            exc,
        )


def claim_messages(
    layout: SpoolLayout, message_ids: Iterable[str], *, read: Mapping[str, int] | None = None
) -> tuple[dict[str, OSError], dict[str, bytes]]:
    """Move many incoming messages to ``processing/`` (not durable: see :func:`move_message`).

    Returns the error of each one that could not be moved, and the content of each claimed
    message named in ``read`` (id → most bytes to read) that is no longer than that: read
    here, in the claim's thread hop, the relay needs no hop of its own to open it. A message
    that cannot be read, or turns out longer, is left out (the relay reads it itself).
    """
    errors: dict[str, OSError] = {}
    contents: dict[str, bytes] = {}
    read = read or {}
    for message_id in message_ids:
        try:
            move_message(layout, message_id, INCOMING, PROCESSING, durable=False)
        except OSError as exc:
            errors[message_id] = exc
            continue
        if (limit := read.get(message_id)) is not None:
            content = _read_up_to(layout.path(PROCESSING, message_id, EML), limit)
            if content is not None:
                contents[message_id] = content
    return errors, contents


def _read_up_to(path: str, limit: int) -> bytes | None:
    """The whole file if it has at most ``limit`` bytes; None if longer or unreadable."""
    try:
        with open(path, "rb") as file:
            content = file.read(limit + 1)
    except OSError:
        return None
    return content if len(content) <= limit else None


def return_claims(layout: SpoolLayout, message_ids: Iterable[str]) -> list[str]:
    """Move claimed messages back to ``incoming/``, then fsync both directories once; return
    the ids moved (one that cannot be moved is logged and stays claimed)."""
    returned: list[str] = []
    for message_id in message_ids:
        try:
            move_message(layout, message_id, PROCESSING, INCOMING, durable=False)
        except OSError as exc:
            logger.error("spool: could not return claimed %s: %s", message_id, exc)
        else:
            returned.append(message_id)
    try:
        fsync_dir(layout.state_dir_strings[INCOMING])
        fsync_dir(layout.state_dir_strings[PROCESSING])
    except OSError as exc:  # the claims are back all the same; start-up returns them anyway
        logger.warning("spool: returned claims may not survive a power cut (%s)", exc)
    return returned


def remove_message(layout: SpoolLayout, message_id: str, state: MessageState) -> None:
    """Delete a message's files, envelope first, then fsync its directory.

    Raises ``OSError`` only if the envelope could not be removed (the message is then still
    there). Once the envelope is gone the message is gone: a failure to remove the body or
    to fsync is logged, not raised — start-up recovery sets an envelope-less body aside. A
    one-file message has no ``.json``: removing its ``.eml`` removes it.
    """
    _unlink_message(layout, message_id, state)
    try:
        fsync_dir(layout.state_dir_strings[state])
    except OSError as exc:
        logger.warning("message %s: removed, but not yet durably (%s)", message_id, exc)


def remove_messages(
    layout: SpoolLayout, message_ids: Iterable[str], state: MessageState
) -> dict[str, OSError]:
    """Delete many messages' files (each as :func:`remove_message` does), then fsync their
    directory once; return the error of each message that is still there.

    One fsync for the whole batch: a power cut before it may bring back any of them, whole
    (each is then handled as if never removed: a delivered one is delivered again) or as a
    body without an envelope (set aside by recovery).
    """
    failed: dict[str, OSError] = {}
    for message_id in message_ids:
        try:
            _unlink_message(layout, message_id, state)
        except OSError as exc:
            failed[message_id] = exc
    try:
        fsync_dir(layout.state_dir_strings[state])
    except OSError as exc:
        logger.warning("spool: removals from %s/ not yet durable (%s)", state.value, exc)
    return failed


def _unlink_message(layout: SpoolLayout, message_id: str, state: MessageState) -> None:
    """Unlink the envelope, then the body; raise only if the envelope is still there."""
    try:
        os.unlink(layout.path(state, message_id, JSON))
    except FileNotFoundError:
        os.unlink(layout.path(state, message_id, EML))  # one file: raises if still there
        return
    try:
        os.unlink(layout.path(state, message_id, EML))
    except FileNotFoundError:
        pass  # bodiless: see recovery
    except OSError as exc:
        logger.warning(
            "message %s: envelope removed but not its body (%s); start-up will set it aside",
            message_id,
            exc,
        )


def capture_message(
    layout: SpoolLayout, message_id: str, state: MessageState, envelope: bytes
) -> Path:
    """Put a copy of a message into ``captured/`` (the Local inbox); return the body's path.

    The body is hard-linked when possible (spooled bodies are never modified, so sharing the
    inode is safe) and copied otherwise. Capturing the same message twice keeps the first
    body and refreshes the envelope.
    """
    body = layout.captured / f"{message_id}{EML}"
    source = layout.path(state, message_id, EML)
    try:
        os.link(source, body)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        _copy_durably(source, body, layout.tmp / f"{message_id}{EML}.copy")
    tmp = layout.tmp_path(message_id, JSON)
    unlink_quietly(tmp)
    write_new_file(tmp, (envelope,))
    try:
        os.rename(tmp, layout.captured / f"{message_id}{JSON}")
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(layout.captured)
    return body


def _copy_durably(source: str, target: Path, tmp: Path) -> None:
    try:
        shutil.copyfile(source, tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
    except BaseException:
        unlink_quietly(tmp)
        raise
