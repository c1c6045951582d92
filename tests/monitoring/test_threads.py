"""``/debug/threads``: every OS thread with its Python stack, then the Trio task tree."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from dispatch.monitoring.threads import os_threads, threads_text


def _parked_in_named_worker(stop: threading.Event) -> None:
    stop.wait()


def _block(text: str, title: str) -> str:
    """The block of the dump whose first line contains ``title``."""
    blocks = [block for block in text.split("\n\n") if title in block.splitlines()[0]]
    assert len(blocks) == 1, title
    return blocks[0]


def test_the_dump_lists_the_main_thread_and_a_named_worker_with_their_stacks() -> None:
    stop = threading.Event()
    worker = threading.Thread(
        target=_parked_in_named_worker, args=(stop,), name="named worker", daemon=True
    )
    worker.start()
    try:
        text = threads_text()
    finally:
        stop.set()
        worker.join(timeout=10)
    main = _block(text, '"MainThread"')
    named = _block(text, '"named worker"')
    assert "[main, rendering this page]" in main.splitlines()[0]
    assert "test_the_dump_lists_the_main_thread_and_a_named_worker" in main
    assert f"thread {worker.native_id} " in named.splitlines()[0]
    assert "_parked_in_named_worker (tests/monitoring/test_threads.py:" in named
    assert named.splitlines()[-1].strip().startswith("| Condition.wait")  # innermost last


def test_the_dump_counts_every_os_thread() -> None:
    text = threads_text()
    listed = re.findall(r"^thread (\d+) ", text, re.MULTILINE)
    assert text.startswith(f"{len(listed)} OS threads")
    assert {int(tid) for tid in listed} <= {int(tid) for tid in os.listdir("/proc/self/task")}
    assert threading.get_native_id() in {int(tid) for tid in listed}


async def test_inside_trio_the_task_tree_follows_the_threads() -> None:
    text = threads_text()
    threads, tasks = text.split("Trio task tree", 1)
    assert '"MainThread"' in threads
    assert "(rendering this page)" in tasks
    assert "test_inside_trio_the_task_tree_follows_the_threads" in tasks


def test_outside_trio_there_is_no_task_tree() -> None:
    assert "Trio task tree" not in threads_text()


def test_kernel_names_with_spaces_and_parentheses_are_read_whole(tmp_path: Path) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    (tmp_path / "41").mkdir()
    (tmp_path / "41" / "stat").write_text(
        f"41 (odd (name) x) S 1 1 1 0 -1 4194560 0 0 0 0 {3 * ticks} {ticks} 0 0 20 0 1 0\n"
    )
    (tmp_path / "self").mkdir()  # not a thread id: skipped
    threads = os_threads(tmp_path)
    assert threads is not None
    assert [(t.tid, t.name, t.state, t.cpu_seconds) for t in threads] == [
        (41, "odd (name) x", "sleeping", 4.0)
    ]


def test_without_proc_there_is_no_kernel_list(tmp_path: Path) -> None:
    assert os_threads(tmp_path / "missing") is None
