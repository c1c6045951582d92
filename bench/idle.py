"""Idle sessions: hold many SMTP connections open, each past its banner, and weigh them.

Connections are opened in batches (so the server's listen queue is never the question), each
reads its ``220`` banner and then stays silent. Resident memory of the server is read from
``/proc`` before (warm, no session), with all of them open, and after they were closed.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import trio

from bench.procstat import rss_bytes
from bench.smtp_client import SmtpConnection, SmtpError

BATCH = 200
SETTLE_SECONDS = 2.0
FD_LIMIT = 65536


@dataclass
class IdleRun:
    wanted: int
    opened: int = 0
    failed: int = 0
    first_error: str = ""
    open_seconds: float = 0.0
    rss_idle: int = 0
    rss_open: int = 0
    rss_after: int = 0

    @property
    def bytes_per_connection(self) -> float:
        return (self.rss_open - self.rss_idle) / self.opened if self.opened else 0.0


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """Raise this process's open-file limit (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _warm_up(port: int) -> None:
    """A few sessions first, so code paths and buffers are in memory before the baseline."""
    for _ in range(20):
        connection = await SmtpConnection.open(port)
        await connection.aclose()


async def hold_idle(port: int, pid: int, count: int) -> IdleRun:
    """Open ``count`` sessions to ``port`` and measure the RSS of process ``pid``."""
    run = IdleRun(wanted=count)
    await _warm_up(port)
    await trio.sleep(SETTLE_SECONDS)
    run.rss_idle = rss_bytes(pid)
    held: list[SmtpConnection] = []

    async def open_one() -> None:
        try:
            with trio.fail_after(30):
                held.append(await SmtpConnection.open(port, ehlo=False))
        except (OSError, trio.TooSlowError, SmtpError) as exc:
            run.failed += 1
            run.first_error = run.first_error or f"{type(exc).__name__}: {exc}"

    began = time.monotonic()
    try:
        for first in range(0, count, BATCH):
            async with trio.open_nursery() as nursery:
                for _ in range(first, min(count, first + BATCH)):
                    nursery.start_soon(open_one)
        run.open_seconds = time.monotonic() - began
        run.opened = len(held)
        await trio.sleep(SETTLE_SECONDS)
        run.rss_open = rss_bytes(pid)
    finally:
        with trio.CancelScope(shield=True):
            for connection in held:
                await connection.aclose()
    await trio.sleep(SETTLE_SECONDS)
    run.rss_after = rss_bytes(pid)
    return run
