"""Intake latency at a fixed offered rate: our own Trio load generator.

Theory of operation: messages are due at fixed times (``start + i / rate``), whatever the
server did with the previous ones, and each one's latency counts from the moment it was due
to the final ``250``. A message that has to wait for a free pooled connection because the
server is slow therefore shows that wait in its latency (no coordinated omission). The
connections are opened one after another before the clock starts, so the server's listen
queue plays no part; each carries many messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from bench.load import MAIL_FROM, MESSAGE_BYTES, RCPT_TO
from bench.smtp_client import SmtpConnection, SmtpError, message_body

POOL_SIZE = 20  # as many connections as smtp-source's concurrent sessions
TRANSACTION_TIMEOUT = 10.0


@dataclass
class LatencyRun:
    """Latencies in seconds of the messages that were accepted; failures counted apart."""

    offered_rate: float
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    @property
    def achieved_rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else math.nan


async def fixed_rate(port: int, rate: float, duration: float) -> LatencyRun:
    """Offer ``rate`` messages/s for ``duration`` s over a pool of connections."""
    run = LatencyRun(offered_rate=rate)
    body = message_body(MESSAGE_BYTES, MAIL_FROM, RCPT_TO)
    pool = [await SmtpConnection.open(port) for _ in range(POOL_SIZE)]
    free_send, free_receive = trio.open_memory_channel[SmtpConnection](POOL_SIZE)
    for connection in pool:
        free_send.send_nowait(connection)

    async def one(due: float) -> None:
        connection = await free_receive.receive()
        try:
            with trio.fail_after(TRANSACTION_TIMEOUT):
                await connection.transaction(MAIL_FROM, RCPT_TO, body)
        except (SmtpError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            run.errors += 1
            run.first_error = run.first_error or f"{type(exc).__name__}: {exc}"
            await connection.aclose()
            connection = await SmtpConnection.open(port)
            pool.append(connection)
        else:
            run.latencies.append(trio.current_time() - due)
        free_send.send_nowait(connection)

    total = int(rate * duration)
    start = trio.current_time() + 0.05
    try:
        async with trio.open_nursery() as nursery:
            for number in range(total):
                due = start + number / rate
                await trio.sleep_until(due)
                nursery.start_soon(one, due)
        run.seconds = trio.current_time() - start
    finally:
        with trio.CancelScope(shield=True):
            for connection in pool:
                await connection.aclose()
    return run
