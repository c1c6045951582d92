"""CPU time and memory of the servers under test, read from ``/proc``.

A server is identified by its session id: every child is started in a session of its own
(see :mod:`bench.procs`), and Postfix's master starts its own; a server's CPU time is then
the sum over every process in that session, children it already reaped included
(``cutime``/``cstime``). Per-thread figures tell the Trio thread of Dispatch apart from its
worker threads (disk and database work).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(path: Path) -> list[str] | None:
    """Fields 3.. of a ``stat`` file (after the command name, which may contain spaces)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _cpu_seconds(fields: list[str], *, children: bool) -> float:
    # Field numbers from proc(5), minus 3 for the two removed: utime 14, stime 15, cutime 16,
    # cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def session_cpu_seconds(session_id: int) -> float:
    """CPU seconds used so far by every process in ``session_id`` (and children it reaped)."""
    total = 0.0
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry / "stat")
        if fields is not None and int(fields[3]) == session_id:
            total += _cpu_seconds(fields, children=True)
    return total


def session_of(pid: int) -> int | None:
    fields = _stat_fields(PROC / str(pid) / "stat")
    return None if fields is None else int(fields[3])


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread of ``pid``: ``main`` (the Trio thread) and ``other`` threads."""
    result = {"main": 0.0, "other": 0.0}
    for task in (PROC / str(pid) / "task").iterdir():
        fields = _stat_fields(task / "stat")
        if fields is None:
            continue
        key = "main" if task.name == str(pid) else "other"
        result[key] += _cpu_seconds(fields, children=False)
    return result


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (``VmRSS``), in bytes."""
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


@dataclass
class CpuWindow:
    """CPU used by a server between :meth:`start` and :meth:`stop`, as cores busy."""

    session_id: int
    main_pid: int | None = None  # set for Dispatch: split the Trio thread from the others
    _began: float = 0.0
    _cpu0: float = 0.0
    _threads0: dict[str, float] | None = None
    wall: float = 0.0
    cpu: float = 0.0
    threads: dict[str, float] | None = None

    def start(self) -> None:
        self._began = time.monotonic()
        self._cpu0 = session_cpu_seconds(self.session_id)
        if self.main_pid is not None:
            self._threads0 = thread_cpu_seconds(self.main_pid)

    def stop(self) -> None:
        self.wall = time.monotonic() - self._began
        self.cpu = session_cpu_seconds(self.session_id) - self._cpu0
        if self.main_pid is not None and self._threads0 is not None:
            now = thread_cpu_seconds(self.main_pid)
            self.threads = {key: now[key] - self._threads0[key] for key in now}

    @property
    def cores(self) -> float:
        """Average number of cores busy over the window (1.0 = one core all the time)."""
        return self.cpu / self.wall if self.wall else 0.0

    def thread_cores(self, key: str) -> float:
        if not self.threads or not self.wall:
            return 0.0
        return self.threads[key] / self.wall
