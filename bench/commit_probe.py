"""``python -m bench.commit_probe [M]``: CPU and rate of M spool commits, as intake makes them.

A quick A/B tool for the spool's write path, beside ``nox -s bench``: 20 Trio tasks commit M
messages of 5 KiB (one recipient) through :meth:`Spool.begin` into a fresh spool under
``/tmp``, and the process's own CPU (user + system, from ``getrusage``: the Trio thread and
the worker threads doing the writes and fsyncs) is divided by M. No sockets and no SMTP, so
it varies far less on a busy machine than a whole-daemon figure. Compare source trees by
putting each first on ``PYTHONPATH`` in alternation::

    for i in 1 2 3; do for t in /tmp/before /tmp/after; do
        PYTHONPATH=$t python -m bench.commit_probe 3000; done; done
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time

import trio

from dispatch.spool import Spool

SESSIONS = 20
BODY_BYTES = 5120


async def probe(messages: int) -> str:
    directory = tempfile.mkdtemp(prefix="commit-probe-", dir="/tmp")
    try:
        spool = await Spool.open(os.path.join(directory, "spool"))
        body = os.urandom(BODY_BYTES)
        left = messages

        async def session() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with spool.begin() as message:
                    await message.write(body)
                    await message.commit(
                        mail_from="a@example.test",
                        recipients=["b@example.test"],
                        source="smtp",
                        peer_ip="127.0.0.1",
                    )

        before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(SESSIONS):
                nursery.start_soon(session)
        seconds = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    user = (after.ru_utime - before.ru_utime) * 1000 / messages
    system = (after.ru_stime - before.ru_stime) * 1000 / messages
    return (
        f"{user + system:.3f} ms CPU per commit (user {user:.3f}, system {system:.3f}), "
        f"{messages / seconds:.0f} commits/s"
    )


def main() -> int:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    print(trio.run(probe, messages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
