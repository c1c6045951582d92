"""A flame graph (SVG) of every thread of every Dispatch process, drawn by py-spy.

``/debug/profile`` samples the main process's Trio thread only; the flame graph adds the
worker threads (fsync, SQLite) and the intake worker processes (``--subprocesses``), so the
CPU per message can be read off one picture. py-spy reads the processes' memory from
outside (ptrace): nothing in Dispatch changes while it samples. Frames are merged per
function (``--function``), which keeps each SVG small enough to commit beside the report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

SAMPLES_PER_SECOND = 100


def py_spy() -> str | None:
    """The py-spy executable (the bench environment's, else one on PATH), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def record(pid: int, seconds: float, output: Path) -> str:
    """Sample ``pid`` and its children for ``seconds`` into ``output``; return "" or why not."""
    executable = py_spy()
    if executable is None:
        return "py-spy is not installed (it is in the bench extra: pip install -e .[bench])"
    output.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--function",
        "--rate",
        str(SAMPLES_PER_SECOND),
        "--duration",
        str(max(1, round(seconds))),
        "--format",
        "flamegraph",
        "--output",
        str(output),
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy failed: {exc}"
    if done.returncode != 0 or not output.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()
        return f"py-spy exited with {done.returncode}: {tail[-1] if tail else 'no output'}"
    return ""


def record_during(pid: int, seconds: float, output: Path, load: Callable[[], None]) -> str:
    """Run ``load`` in a thread and record a flame graph while it runs (after 0.5 s of it);
    ``load`` must last longer than ``seconds``. Returns "" or why no graph was made."""
    thread = threading.Thread(target=load, name="load while recording", daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        return record(pid, seconds, output)
    finally:
        thread.join()
