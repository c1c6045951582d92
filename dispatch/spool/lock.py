"""One process per spool: an exclusive ``flock`` on ``<spool>/.lock``.

Two daemons sharing a spool would claim, deliver and recover each other's messages. The
daemon takes the lock before opening the spool and holds it while it runs; the command line
takes it to tell whether a daemon is running (then it asks the daemon over the control
socket instead of touching the files). The kernel drops the lock when the process dies, so a
``kill -9`` never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self

from dispatch.spool.errors import SpoolError
from dispatch.spool.layout import DIRECTORY_MODE, FILE_MODE

LOCK_NAME = ".lock"


class SpoolLockedError(SpoolError):
    """Another process holds the spool."""


class SpoolLock:
    """Owns the lock file descriptor; :meth:`release` (or process exit) frees it."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, directory: Path) -> Self:
        """Take the lock without waiting; raise :class:`SpoolLockedError` if it is held.

        Blocking file work: call it from a worker thread in async code.
        """
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        path = directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLockedError(
                f"another Dispatch process is using the spool {directory} (lock {path} is held)"
            ) from None
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
