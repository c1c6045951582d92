"""How many connections each intake worker holds, shared by all of them: what lets a worker
that holds its share leave the next connection to the others.

Every worker waits on the same listening sockets and the kernel wakes all of them for a new
connection; whoever runs first accepts. With connections that stay open (an application's
pool, a script that sends many messages over one session), a burst of them went mostly to
the first worker to wake — 18 of 20 in one run — and then that worker's core, not the
machine, bounded intake (docs/intake-cpu.md, round 10).

The main process makes a memory file of one 32-bit slot per worker (``memfd_create(2)``,
:func:`make_counts_file`) and hands it to every worker it starts; worker ``i`` keeps its
number of open connections in slot ``i`` (:meth:`OpenCounts.hold`) and reads the sum of all
of them (:meth:`OpenCounts.fair_share`). Nothing is locked: a slot is written by its worker
only, an aligned 32-bit store is atomic, and a count read a moment late makes a worker take
one connection more or fewer, never none forever (the listener's deferral is bounded,
``SmtpListener._accept``). The main process clears a worker's slot before it starts the
worker (:func:`clear_slot`), so a worker that died does not leave its count behind.
"""

from __future__ import annotations

import mmap
import os
from typing import Final

_SLOT: Final = 4  # bytes: a native int ("i"), aligned


def make_counts_file(workers: int) -> int:
    """A new memory file of ``workers`` zeroed slots; the caller owns (and closes) the
    descriptor, which is close-on-exec: pass it to each worker explicitly."""
    fd = os.memfd_create("dispatch-intake-connections", os.MFD_CLOEXEC)
    os.ftruncate(fd, _SLOT * workers)
    return fd


def clear_slot(fd: int, slot: int) -> None:
    """Set slot ``slot`` of the memory file ``fd`` to 0."""
    os.pwrite(fd, bytes(_SLOT), _SLOT * slot)


class OpenCounts:
    """One worker's view of the memory file ``fd``: its own slot ``mine`` and everyone's."""

    def __init__(self, fd: int, mine: int) -> None:
        size = os.fstat(fd).st_size
        if size % _SLOT or not 0 <= mine < size // _SLOT:
            raise ValueError(f"slot {mine} is not in a counts file of {size} bytes")
        self._map = mmap.mmap(fd, size)  # shared: the others' stores are seen here
        self._slots = memoryview(self._map).cast("i")
        self._mine = mine
        self.workers = len(self._slots)

    def hold(self, connections: int) -> None:
        """This worker now holds ``connections`` open connections."""
        self._slots[self._mine] = connections

    def fair_share(self, waiting: int) -> int:
        """Each worker's share, rounded up, of the connections all of them hold plus the
        ``waiting`` ones."""
        return -(-(sum(self._slots) + waiting) // self.workers)

    def close(self) -> None:
        self._slots.release()
        self._map.close()
