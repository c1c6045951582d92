"""The receive buffer shared by both sides of the protocol core.

Only CRLF ends a line (RFC 5321 §2.3.8): a bare CR or LF is ordinary data to this buffer, and the
readers above it decide whether that is an error. Everything here is linear in the number of bytes
received, whatever the peer sends:

- the buffer remembers how far it has already searched for CRLF (`_scanned`), so a line that
  trickles in one byte at a time is scanned once, not once per byte;
- a line longer than the caller's limit is not kept: its bytes are dropped as they arrive (only a
  trailing CR is kept, in case the LF follows), and the caller learns of it once the line ends;
- bytes are consumed from the front of a `bytearray`, which CPython does in amortised O(1).
"""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = ["LINE_TOO_LONG", "Overflow", "ReceiveBuffer"]

_CRLF: Final = b"\r\n"
_CR: Final = 0x0D


class Overflow(enum.Enum):
    """Returned by `ReceiveBuffer.next_line` in place of a line that was too long."""

    LINE_TOO_LONG = "line too long"


LINE_TOO_LONG: Final = Overflow.LINE_TOO_LONG


class ReceiveBuffer:
    """Bytes received from the peer and not yet parsed; owns nothing but those bytes."""

    def __init__(self) -> None:
        self._data = bytearray()
        # No CRLF lies entirely inside self._data[:self._scanned]. A search may therefore start
        # at self._scanned - 1 (the CR of a CRLF whose LF had not arrived yet).
        self._scanned = 0
        # True while dropping the rest of a line that already exceeded the caller's limit.
        self._discarding = False

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __bytes__(self) -> bytes:
        return bytes(self._data)

    @property
    def discarding(self) -> bool:
        """True while the rest of an over-long line is being dropped."""
        return self._discarding

    def append(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        self._data += data

    def peek(self, count: int) -> bytes:
        """A copy of the first `count` bytes, without consuming them."""
        return bytes(self._data[:count])

    def take(self, count: int) -> bytes:
        """Consume and return up to `count` bytes (BDAT chunk data, RFC 3030)."""
        out = bytes(self._data[:count])
        self.drop(count)
        return out

    def drop(self, count: int) -> None:
        """Consume `count` bytes without copying them."""
        del self._data[:count]
        self._scanned = max(0, self._scanned - count)

    def next_line(self, max_len: int) -> bytes | Literal[Overflow.LINE_TOO_LONG] | None:
        """Consume one line, CRLF included, if a whole one has arrived.

        Returns the line; `None` if no CRLF has arrived yet; or `LINE_TOO_LONG` once a line
        longer than `max_len` octets (CRLF included) has ended. The bytes of such a line are
        dropped as they arrive, so memory stays bounded by `max_len` whatever the peer sends.
        """
        idx = self._data.find(_CRLF, max(0, self._scanned - 1))
        if idx == -1:
            self._scanned = len(self._data)
            # Without a CRLF, len(data) octets can only become a line of len(data) + 1 or more
            # (at best the last byte is the CR), so at max_len octets the line is already too long.
            if self._discarding or len(self._data) >= max_len:
                self._discarding = True
                self.drop(len(self._data) - self._trailing_cr())
            return None
        end = idx + 2
        if self._discarding or end > max_len:
            self._discarding = False
            self.drop(end)
            return LINE_TOO_LONG
        return self.take(end)

    def complete_lines_end(self, window: int) -> int:
        """How many leading bytes, within the first `window`, form whole lines (0 if none).

        The result ends just after the last CRLF that lies inside the window. Searching resumes
        where the previous unsuccessful search stopped, so repeated calls stay linear.
        """
        end = min(window, len(self._data))
        idx = self._data.rfind(_CRLF, max(0, self._scanned - 1), end)
        if idx == -1:
            self._scanned = max(self._scanned, end)
            return 0
        return idx + 2

    def take_partial_line(self, window: int) -> bytes:
        """Consume up to `window` bytes of a line that has no CRLF in them.

        A trailing CR stays in the buffer: it may be the first half of the line's CRLF. Used
        to stream the pieces of an over-long text line without holding the whole line.
        """
        return self.take(min(window, len(self._data)) - self._trailing_cr(window))

    def _trailing_cr(self, window: int | None = None) -> int:
        end = len(self._data) if window is None else min(window, len(self._data))
        return 1 if end and self._data[end - 1] == _CR else 0
