"""Message data in both directions: reading DATA and BDAT on the server, writing DATA on the
client. One concept: the message text and its transparency rules (RFC 5321 §4.5.2).

Server side (`BodyReader`). The reader takes whole lines out of the receive buffer, at most
`Limits.data_chunk_bytes` at a time, and never holds more than one text line of its own:

- Only `<CRLF>.<CRLF>` ends DATA. A bare CR or LF anywhere in the data is reported as
  `BareLineEnding` (the application answers 521 and closes), so none of the smuggling
  variants (`<LF>.<LF>`, `<CR>.<CR>`, `<CRLF>.<LF>`, `<LF>.<CRLF>` ...) can be read as the end.
- A leading "." is removed from every line (dot-unstuffing, §4.5.2).
- A text line longer than `max_text_line` octets (CRLF included, measured on the wire,
  §4.5.3.1.6) does not stop the reading: the rest of the line is dropped as it arrives, the
  message is marked bad, and the reader goes on to the terminator; `DataEnd.error` then says
  500 5.5.6. Likewise a message that grows past `max_message_bytes` (552 5.3.4).
- A NUL anywhere in the data (RFC 2045 §2.7-2.8: text never holds NUL, and Dispatch offers no
  BINARYMIME) does not stop the reading either: the message is marked bad and `DataEnd.error`
  says 554 5.6.0 (`replies.NUL_IN_DATA`). The framing is intact, so the session goes on;
  only the message is refused. Of a line that is both too long and holds a NUL, the length
  is reported.
- What is emitted does not depend on how the bytes were split into packets: the `DataChunk`s
  are the message up to the first bad line (too long, or holding a NUL), cut at
  `max_message_bytes`.

BDAT (RFC 3030) uses the same reader with the chunk's octet count instead of a terminator and
no dot-unstuffing. Dispatch applies the same line rules there: BDAT framing cannot be
smuggled, but a message accepted with a bare LF would be relayed onwards over DATA, where it
could be. So a bare CR/LF in BDAT data is also a `BareLineEnding`.

Client side (`DataEncoder`): dot-stuffs, turns bare CR and LF into CRLF (RFC 5321 §2.3.8
forbids sending them, and a next hop might read `<LF>.<LF>` as the end), and terminates.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from . import replies
from .buffer import ReceiveBuffer
from .events import BareLineEnding, DataChunk, DataEnd
from .limits import Limits
from .replies import Reply

__all__ = ["BodyReader", "DataEncoder", "LineDiscipline"]

_CRLF: Final = b"\r\n"
_TERMINATOR: Final = b"\r\n.\r\n"


class LineDiscipline:
    """Checks message text as it streams past, in pieces split anywhere.

    Owns the position inside the current line: its length so far and whether the previous
    piece ended in a CR that the next piece's LF may complete.
    """

    def __init__(self, max_line: int) -> None:
        self._max_content = max_line - 2  # the limit counts the CRLF
        self._line_len = 0
        self._cr_pending = False
        self.bare_line_ending = False
        self.line_too_long = False

    @property
    def line_len(self) -> int:
        """Octets of the current line seen so far (0 at the start of a line)."""
        return self._line_len

    @property
    def at_line_start(self) -> bool:
        return self._line_len == 0 and not self._cr_pending

    def feed(self, text: bytes) -> int:
        """Check the next piece of text. Returns the offset in `text` where the first bad line
        starts (0 if it started in an earlier piece), or -1 if every line in it is good."""
        if self._feed_fast(text):
            return -1
        return self._feed_slow(text)

    def end_of_message(self) -> None:
        """The message ends here: a CR still waiting for its LF was a bare CR."""
        if self._cr_pending:
            self.bare_line_ending = True

    def _feed_fast(self, text: bytes) -> bool:
        # The common case, a piece of good lines, checked with a few C-level scans. Returns
        # False without touching any state if anything is wrong; _feed_slow then finds what.
        start = 0
        if self._cr_pending:
            if not text.startswith(b"\n"):
                return not text  # an empty piece changes nothing
            start = 1
        end = len(text) - 1 if len(text) > start and text.endswith(b"\r") else len(text)
        crlfs = text.count(_CRLF, start, end)
        if text.count(b"\r", start, end) != crlfs or text.count(b"\n", start, end) != crlfs:
            return False
        line_len = 0 if self._cr_pending else self._line_len
        if crlfs == 0:
            longest = line_len = line_len + end - start
        else:
            first = text.find(_CRLF, start, end)
            last = text.rfind(_CRLF, start, end)
            longest = line_len + first - start
            if crlfs > 1:
                longest = max(longest, *map(len, text[first + 2 : last].split(_CRLF)))
            line_len = end - last - 2
            longest = max(longest, line_len)
        if longest > self._max_content:
            return False
        self._line_len = line_len
        self._cr_pending = end < len(text)
        return True

    def _feed_slow(self, text: bytes) -> int:
        # Line by line; only reached for a piece that holds a bad line.
        pos = 0
        if self._cr_pending and text:
            self._cr_pending = False
            if not text.startswith(b"\n"):
                self.bare_line_ending = True
                return 0
            pos, self._line_len = 1, 0
        line_start = pos if self._line_len == 0 else 0
        first_bad = -1
        while pos < len(text):
            crlf = text.find(_CRLF, pos)
            end = len(text) if crlf == -1 else crlf
            if crlf == -1 and text.endswith(b"\r"):
                end -= 1
                self._cr_pending = True
            if text.find(b"\r", pos, end) != -1 or text.find(b"\n", pos, end) != -1:
                self.bare_line_ending = True
                return line_start if first_bad == -1 else first_bad
            self._line_len += end - pos
            if self._line_len > self._max_content:
                self.line_too_long = True
                if first_bad == -1:
                    first_bad = line_start
            if crlf == -1:
                break
            pos = line_start = crlf + 2
            self._line_len = 0
        return first_bad


class BodyReader:
    """Streams one message out of the receive buffer: DATA, or the chunks of one BDAT
    transaction. Owns the line discipline, the message size so far and the first error."""

    def __init__(self, limits: Limits, *, chunked: bool) -> None:
        self._limits = limits
        self._chunked = chunked
        self._lines = LineDiscipline(limits.max_text_line)
        self._size = 0
        self._error: Reply | None = None
        self._fatal = False
        self._ready: deque[DataChunk | DataEnd | BareLineEnding] = deque()
        # BDAT only: octets of the current chunk still to read, and whether it is the last.
        self._remaining = 0
        self._last = False
        self._chunk_open = False

    def start_chunk(self, size: int, *, last: bool) -> None:
        """A BDAT command announced `size` octets (RFC 3030 §2)."""
        self._remaining, self._last, self._chunk_open = size, last, True

    def next_event(self, buf: ReceiveBuffer) -> DataChunk | DataEnd | BareLineEnding | None:
        """The next event, or None if more bytes are needed."""
        while not self._ready:
            if self._fatal:
                return None
            progressed = self._step_chunk(buf) if self._chunked else self._step_data(buf)
            if not progressed:
                return None
        return self._ready.popleft()

    def _step_data(self, buf: ReceiveBuffer) -> bool:
        window = self._limits.data_chunk_bytes
        end = buf.complete_lines_end(window)
        if end == 0:
            return self._take_overlong(buf, window)
        region = buf.peek(end)
        if self._lines.at_line_start and region.startswith(b".\r\n"):
            term = 0
        else:
            found = region.find(_TERMINATOR)
            term = -1 if found == -1 else found + 2
        if term == -1:
            buf.drop(end)
            self._accept(region)
        else:
            buf.drop(term + 3)
            self._accept(region[:term])
            if not self._fatal:
                self._ready.append(DataEnd(last=True, error=self._error))
        return True

    def _step_chunk(self, buf: ReceiveBuffer) -> bool:
        if not self._chunk_open:
            return False
        if self._remaining:
            window = min(self._limits.data_chunk_bytes, self._remaining)
            end = buf.complete_lines_end(window)
            if end:
                piece = buf.take(end)
            elif len(buf) >= self._remaining:
                piece = buf.take(self._remaining)  # the chunk ends inside a line
            else:
                return self._take_overlong(buf, window)
            self._remaining -= len(piece)
            self._accept(piece)
        if not self._remaining and not self._fatal:
            if self._last:
                self._lines.end_of_message()
                if self._lines.bare_line_ending:
                    self._fail_bare()
                    return True
            self._chunk_open = False
            self._ready.append(DataEnd(last=self._last, error=self._error))
        return True

    def _take_overlong(self, buf: ReceiveBuffer, window: int) -> bool:
        # No CRLF in the window. Wait for more, unless the line is already too long: then
        # consume it piece by piece so memory stays bounded (the CR of a CRLF stays behind).
        if len(buf) < window and self._lines.line_len + len(buf) < self._limits.max_text_line:
            return False
        piece = buf.take_partial_line(window)
        if not piece:
            return False
        if self._chunked:
            self._remaining -= len(piece)
        self._accept(piece)
        return True

    def _accept(self, text: bytes) -> None:
        bad = self._lines.feed(text)
        nul = _nul_line(text)
        ends = [offset for offset in (bad, nul) if offset != -1]
        good = text[: min(ends)] if ends else text
        if good and self._error is None:
            self._emit(good)
        if self._lines.bare_line_ending:
            self._fail_bare()
        elif self._error is not None:
            pass  # the first error stands
        elif bad != -1 and (nul == -1 or bad <= nul):
            self._error = replies.TEXT_LINE_TOO_LONG
        elif nul != -1:
            self._error = replies.NUL_IN_DATA

    def _emit(self, text: bytes) -> None:
        if not self._chunked:
            # RFC 5321 §4.5.2: drop the first character of every line that starts with ".".
            # `text` always starts at the start of a line here.
            text = text.replace(b"\r\n.", _CRLF)
            if text.startswith(b"."):
                text = text[1:]
        room = self._limits.max_message_bytes - self._size
        if len(text) > room:
            text = text[:room]
            self._error = replies.MESSAGE_TOO_BIG
        self._size += len(text)
        if text:
            self._ready.append(DataChunk(text))

    def _fail_bare(self) -> None:
        self._fatal = True
        self._ready.append(BareLineEnding())


def _nul_line(text: bytes) -> int:
    """Where the first line holding a NUL starts in `text` (0 if it started in an earlier
    piece), or -1 if there is no NUL."""
    nul = text.find(b"\0")
    if nul == -1:
        return -1
    crlf = text.rfind(_CRLF, 0, nul)
    return 0 if crlf == -1 else crlf + 2


class DataEncoder:
    """Client side of DATA: turns message bytes, given in pieces, into the wire form.

    Owns the position in the current line (whether the next byte starts a line, and a CR
    held back until the next piece shows whether an LF follows it).
    """

    def __init__(self) -> None:
        self._line_start = True
        self._cr_pending = False

    def encode(self, data: bytes) -> bytes:
        """The wire form of the next piece of the message."""
        if self._cr_pending:
            data = b"\r" + data
            self._cr_pending = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr_pending = True
        if not data:
            return b""
        # RFC 5321 §2.3.8: lines end in CRLF and nothing else. A spooled message has them
        # already (intake stores CRLF lines), which three counts show without copying it.
        lines = data.count(_CRLF)
        if lines != data.count(b"\n") or lines != data.count(b"\r"):
            data = data.replace(_CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", _CRLF)
        # RFC 5321 §4.5.2: a line that starts with "." gets one more.
        data = data.replace(b"\r\n.", b"\r\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(_CRLF)
        return data

    def end(self) -> bytes:
        """The end of the message: a final CRLF if the message lacks one, then `.` CRLF."""
        out = b""
        if self._cr_pending:
            out, self._line_start, self._cr_pending = _CRLF, True, False
        if not self._line_start:
            out += _CRLF
        self._line_start = True
        return out + b".\r\n"
