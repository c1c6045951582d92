"""Postfix's ``smtp-sink``: the counting SMTP server the relay figures deliver to.

``smtp-sink -c`` rewrites a counter line (``... mesg=N``) on its output after every message;
the output goes to a file, and :meth:`Sink.delivered` reads the last counter from its end.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from bench.procs import LOOPBACK, Child, Launcher, free_port

_COUNTER = re.compile(rb"mesg=(\d+)")
BACKLOG = 1024


@dataclass
class Sink:
    port: int
    child: Child

    def delivered(self) -> int:
        """Messages the sink has received so far."""
        with self.child.log_path.open("rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(0, size - 256))
            found = _COUNTER.findall(log.read())
        return int(found[-1]) if found else 0

    def wait_for(self, count: int, timeout: float) -> float | None:
        """Wait until ``count`` messages arrived; return when (monotonic), None on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.delivered() >= count:
                return time.monotonic()
            time.sleep(0.005)  # a quick end-to-end run lasts 1-2 s: 5 ms is under 0.5 % of it
        return None


def start_sink(launcher: Launcher, name: str = "smtp-sink") -> Sink:
    port = free_port()
    child = launcher.start(
        name, ["smtp-sink", "-c", "-u", "nobody", f"{LOOPBACK}:{port}", str(BACKLOG)]
    )
    child.wait_for_port(port, 10)
    return Sink(port=port, child=child)
