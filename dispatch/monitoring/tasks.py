"""``/debug/tasks``: the live Trio task tree with each task's stack (a goroutine dump).

The tree is walked from :func:`trio.lowlevel.current_root_task` through each task's
``child_nurseries`` and each nursery's ``child_tasks``; a task's stack comes from
:meth:`trio.lowlevel.Task.iter_await_frames`, which follows the chain of awaited coroutines
from the task's own coroutine down to where it is suspended (for the task rendering the page:
down to this module).

Reading frames is pure memory access; source lines are not looked up (that would read files
on the Trio thread), so a stack line is ``function (file:line)``. File names are shortened
to the package-relative path for Dispatch, the standard library and site-packages.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from typing import Final

import trio

MAX_TASKS: Final = 20_000
"""Tasks rendered at most; a page for more would be too big to read anyway (the rest are
counted)."""

_PREFIXES: Final = tuple(
    sorted(
        {
            str(Path(path)) + "/"
            for path in (
                sysconfig.get_paths()["purelib"],
                sysconfig.get_paths()["platlib"],
                sysconfig.get_paths()["stdlib"],
                str(Path(__file__).resolve().parents[2]),  # the directory holding dispatch/
            )
        },
        key=len,
        reverse=True,  # the longest (most specific) prefix first
    )
)


def task_tree_text() -> str:
    """Render every live task of the current Trio run, indented by depth, with its stack.

    Must be called from inside Trio (``RuntimeError`` otherwise). Synchronous: the tree does
    not change while it is walked.
    """
    root = trio.lowlevel.current_root_task()
    if root is None:  # pragma: no cover - only between runs
        raise RuntimeError("no Trio run is active")
    current = trio.lowlevel.current_task()
    lines: list[str] = []
    counted = _walk(root, 0, lines, current, [0])
    header = f"{counted} tasks (python {sys.version.split()[0]}, trio {trio.__version__})"
    if counted > MAX_TASKS:
        lines.append(f"… {counted - MAX_TASKS} more tasks not shown")
    return "\n".join([header, "", *lines]) + "\n"


def _walk(
    task: trio.lowlevel.Task,
    depth: int,
    lines: list[str],
    current: trio.lowlevel.Task,
    seen: list[int],
) -> int:
    seen[0] += 1
    indent = "    " * depth
    if seen[0] <= MAX_TASKS:
        marker = "  (rendering this page)" if task is current else ""
        lines.append(f"{indent}task {task.name}{marker}")
        for frame, lineno in task.iter_await_frames():
            code = frame.f_code
            lines.append(
                f"{indent}  | {code.co_qualname} ({short_path(code.co_filename)}:{lineno})"
            )
    for nursery in task.child_nurseries:
        children = nursery.child_tasks
        if children and seen[0] <= MAX_TASKS:
            lines.append(f"{indent}  + nursery ({len(children)} tasks)")
        for child in sorted(children, key=lambda t: t.name):
            _walk(child, depth + 1, lines, current, seen)
    return seen[0]


def short_path(filename: str) -> str:
    """``filename`` relative to site-packages, the standard library or Dispatch's root."""
    for prefix in _PREFIXES:
        if filename.startswith(prefix):
            return filename[len(prefix) :]
    return filename
