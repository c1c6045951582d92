"""Where spool files live, and the small synchronous file primitives every operation uses.

Layout under the spool directory (SPEC §5)::

    incoming/    accepted, waiting for (another) delivery attempt
    processing/  claimed by a delivery worker
    failed/      given up; waits for an operator's retry or delete
    captured/    the Local inbox: copies made by the ``local`` relay
    tmp/         files being written; anything here at start-up is a leftover
    orphaned/    bodies start-up found without any envelope, set aside (created on demand)

A message is ``<id>.eml`` (the bytes exactly as received) and its envelope, in one of two
forms:

* **one file**: the envelope is the extended attribute :data:`ENVELOPE_XATTR` of the
  ``.eml`` itself (what intake writes: one file to fsync, so a commit costs two fsyncs —
  the file and ``incoming/`` — instead of three, and one where the file's fsync also makes
  its rename durable: ``durability.py``);
* **pair**: ``<id>.json`` beside the ``.eml`` (what earlier versions wrote, what a file
  system without user extended attributes gets, and what a message becomes once delivery
  rewrites its envelope). A ``.json`` always wins over the attribute.

The directory holding the ``.json`` — or, without one, the ``.eml`` that carries the
attribute — is the message's state; the ``.json`` is moved last and removed first, which is
what makes every crash repairable (see ``recovery.py``). Copies of a spool must keep
extended attributes (``cp -a``, ``rsync -aX``, ``tar --xattrs``): a one-file message whose
attribute was dropped is a body without an envelope, which start-up sets aside in
``orphaned/`` (never deletes: see ``recovery.py``).

Everything here blocks: call it from ``trio.to_thread.run_sync``, never from the Trio thread.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import os
from pathlib import Path
from typing import Final

from dispatch.spool.durability import file_fsync_covers_rename

DIRECTORY_MODE = 0o700  # mail is private: only the daemon's user may list or read it
FILE_MODE = 0o600

EML = ".eml"
JSON = ".json"

ENVELOPE_XATTR: Final = "user.dispatch.envelope"
"""The extended attribute of a one-file message's ``.eml`` that holds its envelope (JSON)."""

MAX_XATTR_ENVELOPE: Final = 3584
"""Longer envelopes go to a ``.json``: ext4 keeps all of a file's attributes in one block."""

IOV_MAX: Final = max(16, os.sysconf("SC_IOV_MAX"))
"""How many buffers one ``writev(2)`` takes (1024 on Linux; POSIX promises at least 16)."""

# What setxattr raises when the file system cannot keep this envelope as an attribute: no
# user attributes (ENOTSUP; EPERM on some), or no room left for it (E2BIG, ERANGE, ENOSPC —
# a disk that is really full then fails the ``.json`` write with ENOSPC as well).
_NO_XATTR: Final = frozenset(
    {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.E2BIG, errno.ERANGE, errno.ENOSPC}
)


class MessageState(enum.StrEnum):
    """The state of a message, which is also the name of the directory holding its files."""

    INCOMING = "incoming"
    PROCESSING = "processing"
    FAILED = "failed"


class SpoolLayout:
    """The paths of one spool directory. Owns nothing but names; cheap to copy around."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.captured = root / "captured"
        self.orphaned = root / "orphaned"
        self.state_dirs = {state: root / state.value for state in MessageState}
        self.state_dir_strings = {state: str(path) for state, path in self.state_dirs.items()}
        self._tmp_string = str(self.tmp)

    @functools.cached_property
    def file_fsync_covers_rename(self) -> bool:
        """Whether a commit may rename first and fsync only the file (``durability.py``);
        looked up on first use, then kept."""
        return file_fsync_covers_rename(self.root)

    @property
    def all_dirs(self) -> tuple[Path, ...]:
        return (*self.state_dirs.values(), self.captured, self.tmp)

    # The two below are strings, not Paths: every state change of every message builds a
    # few, and a `Path` costs several times a string to build and again to hand to `os`.

    def path(self, state: MessageState, message_id: str, suffix: str) -> str:
        return f"{self.state_dir_strings[state]}/{message_id}{suffix}"

    def tmp_path(self, message_id: str, suffix: str) -> str:
        return f"{self._tmp_string}/{message_id}{suffix}"

    def create_dirs(self) -> None:
        """Create the root and every subdirectory that is missing, private to this user."""
        self.root.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        for directory in self.all_dirs:
            directory.mkdir(mode=DIRECTORY_MODE, exist_ok=True)


def fsync_dir(directory: str | Path) -> None:
    """Make the entries of ``directory`` (creations, renames, unlinks) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: str | Path, chunks: list[bytes] | tuple[bytes, ...]) -> None:
    """Create ``path`` (it must not exist), write ``chunks`` and fsync it.

    On failure the partial file is removed and the error re-raised.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            write_all(fd, chunks)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(path)
        raise


def write_all(fd: int, chunks: list[bytes] | tuple[bytes, ...]) -> None:
    """Write every byte of ``chunks`` to ``fd``: one ``writev(2)`` for up to ``IOV_MAX``
    chunks, so a message's chunks cost one system call (and one hand-back of the interpreter
    lock from its thread), not one each. ``writev`` may write less than asked, as ``write``."""
    pending: list[bytes | memoryview] = list(chunks)
    first = 0
    while first < len(pending):
        written = os.writev(fd, pending[first : first + IOV_MAX])
        while first < len(pending) and written >= len(pending[first]):
            written -= len(pending[first])
            first += 1
        if written:
            pending[first] = memoryview(pending[first])[written:]


def unlink_quietly(path: str | Path) -> None:
    """Remove ``path`` if it exists; used in cleanup, where a second error would hide the first."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def attach_envelope(fd: int, envelope: bytes) -> bool:
    """Store ``envelope`` as the attribute of the open file ``fd``; False if it cannot be.

    The caller writes a ``.json`` instead when this returns False; the attribute becomes
    durable with the file's next fsync.
    """
    if len(envelope) > MAX_XATTR_ENVELOPE:
        return False
    try:
        os.setxattr(fd, ENVELOPE_XATTR, envelope)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return False
        raise
    return True


def attached_envelope(path: str | Path) -> bytes | None:
    """The envelope attribute of ``path``, or None if it has none (or the file is gone)."""
    try:
        return os.getxattr(path, ENVELOPE_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOENT, *_NO_XATTR):
            return None
        raise


def detach_envelope(path: str | Path) -> None:
    """Remove the envelope attribute of ``path`` once a ``.json`` supersedes it.

    Best effort: a leftover attribute is ignored while the ``.json`` exists, and if a crash
    interrupts the removal of such a message between its two unlinks, the body's old
    envelope brings it back: a duplicate delivery, never a loss.
    """
    with contextlib.suppress(OSError):
        os.removexattr(path, ENVELOPE_XATTR)
