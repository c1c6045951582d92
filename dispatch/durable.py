"""Blocking file primitives for append-only files that must survive a crash.

The storage journal and the webhook outbox both append records with ``os.write`` and make a
created or removed file durable by fsyncing its directory (a file's own fsync does not cover
its name: fsync(2), "Notes"). Callers run these in worker threads.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (``os.write`` may write fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` durable (a created, renamed or removed file)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
