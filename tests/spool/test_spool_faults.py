"""Regression: a directory fsync that fails after a move's renames leaves the index right.

Found by the fault rule of the spool state machine (test_spool_stateful.py): the renames had
moved the message, the fsync's error escaped, and the index still said ``processing``: the
delivery worker's release then failed with "not found" and the message stayed unclaimable
until a restart. Now the failed fsync is logged (the move may not survive a power cut, which
recovery handles) and the operation completes.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dispatch.spool import Envelope, MessageState, Spool, SpoolError
from dispatch.spool.testing import commit, placed


@contextlib.contextmanager
def failing(call: str, nth: int, code: int) -> Iterator[None]:
    """The ``nth`` call (from 0) of ``os.<call>`` fails once with ``code``; the rest work.

    Fault injection, not a mock: every other call is the real one on real files. An EIO from
    fsync cannot be provoked on a healthy disk any other way here.
    """
    original = getattr(os, call)
    calls = 0

    def flaky(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls - 1 == nth:
            raise OSError(code, os.strerror(code))
        return original(*args, **kwargs)

    setattr(os, call, flaky)
    try:
        yield
    finally:
        setattr(os, call, original)


Move = Callable[[Spool, Envelope], Awaitable[object]]


async def release(spool: Spool, envelope: Envelope) -> None:
    await spool.release(envelope.after_attempt(next_attempt_at=1e9, error="421"))


async def mark_failed(spool: Spool, envelope: Envelope) -> None:
    await spool.mark_failed(envelope.after_attempt(next_attempt_at=0, error="550"))


async def release_all(spool: Spool, envelope: Envelope) -> None:
    assert await spool.release_all_claims() == 1


@pytest.mark.parametrize(
    ("move", "state"),
    [(release, MessageState.INCOMING), (mark_failed, MessageState.FAILED),
     (release_all, MessageState.INCOMING)],
)  # fmt: skip
@pytest.mark.parametrize("nth", [0, 1, 2])
async def test_failed_fsync_after_the_renames(
    tmp_path: Path, move: Move, state: MessageState, nth: int
) -> None:
    spool = await Spool.open(tmp_path / "spool")
    envelope = await commit(spool, b"body")
    await spool.claim(envelope.id)
    # An error before the renames (the new envelope's own fsync) is fine: nothing moved.
    with failing("fsync", nth, errno.EIO), contextlib.suppress(SpoolError):
        await move(spool, envelope)
    on_disk = placed(tmp_path / "spool")
    assert {e.id: e.state for e in spool.entries()} == on_disk
    if on_disk[envelope.id] is state:
        assert spool.get(envelope.id).state is state
