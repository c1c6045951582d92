"""The memory file of the connections each intake worker holds (intake/balance.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dispatch.intake.balance import OpenCounts, make_counts_file, mark_absent


@pytest.fixture
def counts_fd() -> Iterator[int]:
    fd = make_counts_file(3)
    yield fd
    os.close(fd)


def test_each_worker_sees_what_the_others_hold(counts_fd: int) -> None:
    first, second, third = (OpenCounts(counts_fd, slot) for slot in range(3))
    assert first.fair_share(0) == 0
    first.hold(5)
    second.hold(2)
    assert third.fair_share(0) == 3  # ceil(7 / 3)
    assert third.fair_share(5) == 4  # ceil(12 / 3)
    first.hold(0)
    assert second.fair_share(0) == 1


def test_only_running_workers_share(counts_fd: int) -> None:
    """A slot is absent until its worker starts counting, and again once the main process
    saw the worker end: neither a worker still starting nor a dead one's count is shared."""
    alone = OpenCounts(counts_fd, 0)
    alone.hold(4)
    assert alone.fair_share(6) == 10  # the two other workers are not running
    dying = OpenCounts(counts_fd, 2)
    dying.hold(30)
    assert alone.fair_share(6) == 20  # ceil(40 / 2)
    mark_absent(counts_fd, 2)  # the main process, once the worker has ended
    assert alone.fair_share(6) == 10


def test_the_file_is_not_inherited_unless_passed(counts_fd: int) -> None:
    assert not os.get_inheritable(counts_fd)  # pass_fds hands it to a worker explicitly


def test_a_slot_outside_the_file_is_refused(counts_fd: int) -> None:
    with pytest.raises(ValueError, match="slot 3 is not in a counts file of 12 bytes"):
        OpenCounts(counts_fd, 3)
