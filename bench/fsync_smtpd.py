"""The fair Python peer: aiosmtpd writing each message durably to a spool directory.

Run as its own process: ``python -m bench.fsync_smtpd --port P --spool DIR``. For each
message the handler writes one file (an envelope header line, then the message bytes as
received), fsyncs the file and then the directory, and only then answers ``250`` — the same
promise Dispatch makes. The blocking writes run in asyncio's default thread pool so that
sessions overlap, as a competent asyncio server would do it. Prints ``ready`` once listening;
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

SERVER_NAME = "bench.example.test"
MAX_MESSAGE_BYTES = 26_214_400  # Dispatch's default listener.max_message_bytes


class FsyncSpoolHandler:
    """aiosmtpd handler: owns the spool directory's descriptor (for the directory fsync)."""

    def __init__(self, spool: Path) -> None:
        self._spool = spool
        self._dir_fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY)
        self._names = itertools.count()
        self._prefix = f"{os.getpid()}-"

    def _store(self, name: str, data: bytes) -> None:
        fd = os.open(self._spool / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(self._dir_fd)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{self._prefix}{next(self._names)}.eml"
        header = f"X-Envelope: {envelope.mail_from} -> {','.join(envelope.rcpt_tos)}\r\n"
        data = header.encode("utf-8", "surrogateescape") + bytes(envelope.original_content)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._store, name, data)
        return f"250 2.0.0 Ok: queued as {name}"


async def serve(port: int, handler: FsyncSpoolHandler) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=SERVER_NAME, data_size_limit=MAX_MESSAGE_BYTES),
        host="127.0.0.1",
        port=port,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", type=Path, required=True)
    args = parser.parse_args()
    args.spool.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.port, FsyncSpoolHandler(args.spool)))


if __name__ == "__main__":
    main()
