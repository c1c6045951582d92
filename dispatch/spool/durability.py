"""Whether a file's own fsync makes its rename durable, on the file system holding the spool.

POSIX makes a new directory entry durable only by an fsync of the directory, so the portable
commit is *fsync the file, rename it into ``incoming/``, fsync ``incoming/``*: two waits for
the disk per message. On the file systems Linux mail spools live on, renaming a file changes
the file's own inode (its ctime: "Like most other Unix systems, set the ctime for inodes on a
rename", ``ext4_rename``; ``XFS_ICHGTIME_CHG`` in XFS's rename; ``simple_rename_timestamp`` in
btrfs), and an fsync of the file after the rename commits that change together with the new
entry:

* **ext4 with a journal, XFS**: the rename is one journal (log) transaction with the
  inode's change; the file's fsync commits the transaction holding its latest change.
* **ext4 without a journal**: adding a directory entry marks the inode ``NEWENTRY``, and
  its fsync then writes the directory it now lives in (``ext4_sync_parent``).
* **btrfs**: the file's fsync logs the inode with its names (the log tree).

There, :func:`file_fsync_covers_rename` is True and the commit becomes *rename into
``incoming/``, fsync the file*: one wait (``writer.py``). Everywhere else — tmpfs, NFS, ZFS,
overlayfs, any file system not listed, or a spool whose mount cannot be found — it is False
and the portable commit stays. Nothing is configured: the spool's mount decides, once when it
is opened, and the start-up log says which.

Blocks (reads ``/proc/self/mountinfo``); cheap enough for the moment a spool is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

COVERING_FILE_SYSTEMS: Final = frozenset({"ext4", "xfs", "btrfs"})
"""File systems on which an fsync of a renamed file also makes its new name durable."""

MOUNTINFO: Final = Path("/proc/self/mountinfo")


def file_fsync_covers_rename(directory: Path) -> bool:
    """True if an fsync of a file renamed into ``directory`` makes the rename durable."""
    return file_system_type(directory) in COVERING_FILE_SYSTEMS


def file_system_type(directory: Path) -> str | None:
    """The type of the file system holding ``directory`` (``"ext4"``...); None if unknown."""
    try:
        device = os.stat(directory).st_dev
        mountinfo = MOUNTINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return type_of_device(mountinfo, device)


def type_of_device(mountinfo: str, device: int) -> str | None:
    """The file system type that ``mountinfo`` (proc(5)'s format) gives for ``device``.

    Each line reads ``ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [TAGS...] - TYPE SOURCE
    SUPER-OPTIONS``; every mount of one device has the same type. None if no line matches or
    the matches disagree.
    """
    wanted = f"{os.major(device)}:{os.minor(device)}"
    found: set[str] = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[2] != wanted or "-" not in fields[6:]:
            continue
        after = fields.index("-", 6) + 1
        if after < len(fields):
            found.add(fields[after])
    return found.pop() if len(found) == 1 else None
