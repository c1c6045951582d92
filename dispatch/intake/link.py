"""The link between the main process and one intake worker process: framed Python objects.

A stream socket pair made by the main process before it starts the worker; each side holds
one end. A frame is a 4-byte big-endian length and a pickle of one object. Pickle is safe
here and only here: both ends are the same program, the socket pair is private to a parent
and the child it started, and nothing from the network is ever put on it unchecked.

What travels (see ``intake/processes.py`` and ``intake/worker.py``):

- main → worker: the settings (``Settings``) at start and after every reload;
- worker → main: lists of ``("ready",)``, each committed envelope, each message-log event,
  and the worker's counters every second (a list: whatever queued up while the last frame
  was being sent).

:meth:`Link.receive` returns ``None`` at end of stream: the other process has gone.
"""

from __future__ import annotations

import pickle
import struct
from typing import Final

import trio

_HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final = 64 << 20  # far above any settings object; a bigger length is a broken link


class LinkBroken(Exception):
    """The other end sent something that is not a frame."""


class Link:
    """One end of the pair; sends are serialised, so several tasks may send."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, message: object) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        async with self._send_lock:
            await self._stream.send_all(_HEADER.pack(len(payload)) + payload)

    async def receive(self) -> object | None:
        """The next object, or ``None`` once the other end has closed the link."""
        while True:
            if len(self._buffer) >= _HEADER.size:
                (length,) = _HEADER.unpack_from(self._buffer)
                if length > MAX_FRAME:
                    raise LinkBroken(f"frame of {length} bytes")
                end = _HEADER.size + length
                if len(self._buffer) >= end:
                    payload = bytes(self._buffer[_HEADER.size : end])
                    del self._buffer[:end]
                    message: object = pickle.loads(payload)  # noqa: S301 - see the module doc
                    return message
            data = await self._stream.receive_some(1 << 16)
            if not data:
                if self._buffer:
                    raise LinkBroken("the link closed in the middle of a frame")
                return None
            self._buffer += data

    async def aclose(self) -> None:
        await self._stream.aclose()
