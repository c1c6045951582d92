"""Wedge a SQLite database: hold an exclusive lock on it from a process of its own.

``python -m bench.wedge DATABASE SECONDS`` takes ``BEGIN EXCLUSIVE`` (waiting up to a minute
for it), prints ``locked``, and holds the lock for SECONDS or until SIGTERM. Every reader and
writer of the file then waits: what a stuck backup, a long migration or a hung NFS server
would do to Dispatch's database.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import time
from types import FrameType


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    database, seconds = sys.argv[1], float(sys.argv[2])
    signal.signal(signal.SIGTERM, _stop)
    connection = sqlite3.connect(database, timeout=60.0, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    try:
        time.sleep(seconds)
    finally:
        connection.execute("ROLLBACK")
        connection.close()


if __name__ == "__main__":
    main()
