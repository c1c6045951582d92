"""How many connections each intake worker holds, shared by all of them: what lets a worker
that holds its share leave the next connection to the others.

Every worker waits on the same listening sockets and the kernel wakes all of them for a new
connection; whoever runs first accepts. With connections that stay open (an application's
pool, a script that sends many messages over one session), a burst of them went mostly to
the first worker to wake — 18 of 20 in one run — and then that worker's core, not the
machine, bounded intake (docs/intake-cpu.md, round 10).

The main process makes a memory file of one 32-bit slot per worker (``memfd_create(2)``,
:func:`make_counts_file`) and hands it to every worker it starts. A slot is :data:`ABSENT`
while its worker is not running: every slot starts so, and the main process marks a slot so
again once its worker has ended (:func:`mark_absent`); a worker counts itself in when it
starts serving. Neither a worker that died nor one still starting is counted. A running
worker keeps its number of open connections in its slot (:meth:`OpenCounts.hold`) and reads
everyone's (:meth:`OpenCounts.fair_share`). Nothing is locked: a slot is written by one
process at a time, an aligned 32-bit store is atomic, and a count read a moment late makes a
worker take one connection more or fewer, never none for long (the listener's deferral is
bounded, ``SmtpListener._accept``).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Final

ABSENT: Final = -1
_SLOT: Final = struct.Struct("i")  # a native int, aligned


def make_counts_file(workers: int) -> int:
    """A new memory file of ``workers`` slots, all :data:`ABSENT`; the caller owns (and
    closes) the descriptor, which is close-on-exec: pass it to each worker explicitly."""
    fd = os.memfd_create("dispatch-intake-connections", os.MFD_CLOEXEC)
    os.write(fd, _SLOT.pack(ABSENT) * workers)
    return fd


def mark_absent(fd: int, slot: int) -> None:
    """Slot ``slot`` of the memory file ``fd``: its worker is not running."""
    os.pwrite(fd, _SLOT.pack(ABSENT), _SLOT.size * slot)


class OpenCounts:
    """One running worker's view of the memory file ``fd``: its own slot ``mine``, which it
    marks present (holding no connection) at once, and everyone's."""

    def __init__(self, fd: int, mine: int) -> None:
        size = os.fstat(fd).st_size
        if size % _SLOT.size or not 0 <= mine < size // _SLOT.size:
            raise ValueError(f"slot {mine} is not in a counts file of {size} bytes")
        self._slots = memoryview(mmap.mmap(fd, size)).cast("i")  # shared with the others
        self._mine = mine
        self.hold(0)

    def hold(self, connections: int) -> None:
        """This worker now holds ``connections`` open connections."""
        self._slots[self._mine] = connections

    def fair_share(self, waiting: int) -> int:
        """Each running worker's share, rounded up, of the connections they all hold plus
        the ``waiting`` ones."""
        held = [count for count in self._slots if count != ABSENT]
        return -(-(sum(held) + waiting) // len(held))  # this worker's own slot is there
