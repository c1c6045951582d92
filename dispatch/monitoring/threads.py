"""``/debug/threads``: every OS thread of the process with its Python stack (a goroutine dump).

The threads come from ``/proc/self/task`` (every kernel thread, Python's or a library's:
its id, name, state and CPU time), joined on the kernel thread id with Python's threads
(:func:`threading.enumerate`) and their current frames (:func:`sys._current_frames`). A
thread with no Python frame (a C library's own thread, or one between two jobs in C) is
listed with its state alone. Where ``/proc`` is missing, the Python threads are listed.

Reading ``/proc`` touches no disk (the kernel answers from memory), and source lines are not
looked up (that would read files on the Trio thread): a stack line is
``function (file:line)``, outermost first, innermost (where the thread is now) last.
When the page runs inside Trio, the Trio task tree
(:func:`~dispatch.monitoring.tasks.task_tree_text`) follows the threads: the Trio thread's
own stack only shows the scheduler, the tasks show what each coroutine waits on.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

import attrs
import trio

from dispatch.monitoring.sampling import MAX_DEPTH
from dispatch.monitoring.tasks import short_path, task_tree_text

_PROC_TASKS: Final = Path("/proc/self/task")
_STATES: Final = {
    "R": "running",
    "S": "sleeping",
    "D": "waiting on I/O",
    "T": "stopped",
    "t": "traced",
    "Z": "zombie",
    "X": "dead",
    "I": "idle",
}


@attrs.frozen
class OsThread:
    """One kernel thread as ``/proc/self/task/<tid>/stat`` shows it."""

    tid: int
    name: str  # the kernel's name (``comm``, at most 15 bytes)
    state: str
    cpu_seconds: float  # user + system


def os_threads(proc: Path = _PROC_TASKS) -> list[OsThread] | None:
    """Every kernel thread of this process, or None where there is no ``/proc``."""
    try:
        entries = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    except OSError:
        return None
    ticks = _clock_ticks()
    found = []
    for tid in entries:
        try:
            stat = (proc / str(tid) / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        # "tid (comm) state ...": comm may hold spaces and parentheses; it ends at the last ")".
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15)
        found.append(OsThread(tid, name, _STATES.get(fields[0], fields[0]), cpu))
    return found


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):  # pragma: no cover - every Linux has it
        return 100


def _frames(frame: FrameType | None) -> list[str]:
    lines: list[str] = []
    while frame is not None and len(lines) < MAX_DEPTH:
        code = frame.f_code
        line = frame.f_lineno or code.co_firstlineno
        lines.append(f"{code.co_qualname} ({short_path(code.co_filename)}:{line})")
        frame = frame.f_back
    lines.reverse()
    return lines


def threads_text(*, with_tasks: bool = True) -> str:
    """The dump: every thread, its state and stack; then the Trio task tree if Trio runs here.

    Synchronous and in memory (``/proc`` aside); call it from any thread.
    """
    frames = sys._current_frames()
    python = {thread.native_id: thread for thread in threading.enumerate()}
    me = threading.get_native_id()
    kernel = os_threads()
    blocks: list[str] = []
    if kernel is None:
        listed: Sequence[tuple[int, str, str]] = [
            (tid, thread.name, "") for tid, thread in python.items() if tid is not None
        ]
    else:
        listed = [(t.tid, t.name, f", {t.state}, {t.cpu_seconds:.2f} s CPU") for t in kernel]
    with_frames = 0
    for tid, kernel_name, facts in listed:
        thread = python.get(tid)
        title = f'thread {tid} "{thread.name if thread else kernel_name}"'
        if thread is not None and thread.name != kernel_name and kernel is not None:
            title += f" (kernel name {kernel_name!r})"
        marks = []
        if thread is threading.main_thread():
            marks.append("main")
        if thread is not None and thread.daemon:
            marks.append("daemon")
        if tid == me:
            marks.append("rendering this page")
        title += facts + (f" [{', '.join(marks)}]" if marks else "")
        stack = _frames(frames.get(thread.ident)) if thread and thread.ident else []
        with_frames += bool(stack)
        body = [f"  | {line}" for line in stack] or ["  (no Python frames)"]
        blocks.append("\n".join([title, *body]))
    header = (
        f"{len(listed)} OS threads, {with_frames} running Python code "
        f"(python {sys.version.split()[0]}); stacks outermost first"
    )
    text = "\n\n".join([header, *blocks]) + "\n"
    if with_tasks and _in_trio():
        text += "\n\nTrio task tree\n\n" + task_tree_text()
    return text


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
