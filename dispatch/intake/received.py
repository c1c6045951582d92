"""Trace headers: the ``Received:`` line Dispatch prepends, and mail-loop detection.

RFC 5321 §4.4 requires an SMTP server to prepend a ``Received:`` trace header; we add it as
bytes in front of the message exactly as received (never re-serialising the message). It
deliberately has no ``for <recipient>`` clause: the envelope recipients, Bcc included, must
not leak into the headers. RFC 5321 §6.3: a server should refuse mail that has passed
through too many hops; :class:`LoopDetector` counts ``Received:`` headers while the message
streams in.
"""

from __future__ import annotations

import email.header
import email.utils
import functools
import re
from typing import Final

MAX_RECEIVED_HEADERS: Final = 50
"""More ``Received:`` headers than this is a loop (SPEC §3; Postfix's default is 50 too)."""

HEADER_SCAN_LIMIT: Final = 1024 * 1024
"""Header bytes kept for counting; a header section longer than this stops being scanned."""

_UNSAFE = re.compile(r"[^\x21-\x7e]|[()\\]")


def _clean(text: str) -> str:
    """Client-supplied text made safe inside a header comment (no controls, no parens)."""
    return _UNSAFE.sub("?", text)[:255] or "unknown"


def protocol_name(*, esmtp: bool, tls: bool, authenticated: bool) -> str:
    """The ``with`` keyword of RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(
    *,
    server_name: str,
    helo: str,
    peer_ip: str,
    protocol: str,
    message_id: str,
    timestamp: float,
) -> bytes:
    """One ``Received:`` header line, CRLF-terminated, ready to prepend to the message."""
    line = (
        f"Received: from {_clean(helo)} ([{_clean(peer_ip)}])\r\n"
        f"\tby {_clean(server_name)} (Dispatch) with {protocol} id {message_id};\r\n"
        f"\t{_rfc5322_date(int(timestamp))}\r\n"
    )
    return line.encode("ascii")


@functools.lru_cache(maxsize=4)
def _rfc5322_date(seconds: int) -> str:
    """``Thu, 03 Dec 2026 06:00:00 GMT``: a busy relay stamps many messages in each second."""
    return email.utils.formatdate(seconds, localtime=False, usegmt=True)


def _decode_subject(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError):  # a broken encoded-word: keep it as written
        return text


class LoopDetector:
    """Counts ``Received:`` header fields in a message fed to it chunk by chunk.

    Owns a copy of the header section only (up to :data:`HEADER_SCAN_LIMIT`); once the blank
    line that ends the headers has been seen, later chunks cost nothing.
    """

    def __init__(self) -> None:
        self._head = bytearray()
        self._searched = 0
        self._done = False
        self.received_count = 0
        self.subject: str | None = None  # decoded (RFC 2047), for the message log

    def feed(self, chunk: bytes) -> None:
        if self._done:
            return
        self._head += chunk
        # Search only the new bytes (plus 3 for a CRLFCRLF split across chunks): linear.
        end = self._head.find(b"\r\n\r\n", max(0, self._searched - 3))
        if self._head.startswith(b"\r\n"):
            end = 0
        self._searched = len(self._head)
        if end >= 0 or len(self._head) > HEADER_SCAN_LIMIT:
            self._count(bytes(self._head[: end if end >= 0 else HEADER_SCAN_LIMIT]))

    def _count(self, headers: bytes) -> None:
        self._done = True
        self._head = bytearray()
        lines = headers.split(b"\r\n")
        self.received_count = sum(1 for line in lines if line[:9].lower() == b"received:")
        for index, line in enumerate(lines):
            if line[:8].lower() == b"subject:":
                folded = [line[8:]]
                for more in lines[index + 1 :]:  # RFC 5322 §2.2.3 folding
                    if more[:1] not in (b" ", b"\t"):
                        break
                    folded.append(more)
                self.subject = _decode_subject(b"".join(folded))
                break

    def finish(self) -> None:
        """The message ended; count what was seen if no blank line ended the headers."""
        if not self._done:
            self._count(bytes(self._head))

    @property
    def is_loop(self) -> bool:
        return self.received_count > MAX_RECEIVED_HEADERS
