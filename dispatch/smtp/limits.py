"""Size limits for both sides of the protocol core, with the reason for every number."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientLimits", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a `ServerConnection` accepts from one client.

    Every limit bounds memory: nothing the client sends is buffered beyond the longest line
    allowed here plus what one `receive_data` call hands over; message data is streamed in
    `DataChunk`s of at most `data_chunk_bytes`.
    """

    # RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including the CRLF.
    max_command_line: int = 512
    # MAIL and RCPT may carry ESMTP parameters, which extend the line (RFC 5321 §4.5.3.1.4:
    # "may be increased by the use of SMTP Service Extensions"; RFC 1870 SIZE asks for 26
    # more octets, RFC 3461 DSN 100, RFC 4954 AUTH= 500). One allowance of 512 covers them all,
    # so a MAIL or RCPT line may be 1024 octets.
    extension_allowance: int = 512
    # RFC 4954 §4: AUTH command lines and SASL responses may be up to 12288 octets.
    max_auth_line: int = 12288
    # RFC 5321 §4.5.3.1.6: a text line of message data is at most 1000 octets including CRLF.
    max_text_line: int = 1000
    # RFC 5321 §4.5.3.1.8 requires room for at least 100 recipients; SPEC §3 caps it there.
    max_recipients: int = 100
    # SPEC §2 listener.max_message_bytes: checked against SIZE= and while reading the data.
    max_message_bytes: int = 26_214_400
    # Largest DataChunk handed to the application: large enough to write efficiently, small
    # enough that a message is never held whole.
    data_chunk_bytes: int = 65_536

    def __post_init__(self) -> None:
        if self.max_command_line < 512:
            raise ValueError("max_command_line below RFC 5321's 512 octets breaks real clients")
        if self.max_text_line < 1000:
            raise ValueError("max_text_line below RFC 5321's 1000 octets breaks real clients")
        if self.data_chunk_bytes < self.max_text_line:
            raise ValueError("data_chunk_bytes must hold at least one full text line")
        if self.max_recipients < 1 or self.max_message_bytes < 0:
            raise ValueError("max_recipients must be >= 1 and max_message_bytes >= 0")

    @property
    def max_mail_line(self) -> int:
        """Longest MAIL or RCPT line (command line plus the ESMTP parameter allowance)."""
        return self.max_command_line + self.extension_allowance

    @property
    def max_line(self) -> int:
        """Longest line the command reader ever buffers before declaring it too long."""
        return max(self.max_mail_line, self.max_auth_line)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What a `ClientConnection` accepts from one server before calling it broken."""

    # RFC 5321 §4.5.3.1.5 says 512 octets per reply line; real servers exceed it now and then
    # (long EHLO AUTH lists, verbose rejections), so allow four times that.
    max_reply_line: int = 2048
    # An EHLO reply has one line per extension; no honest reply comes near this.
    max_reply_lines: int = 100
    # Total size of one (multi-line) reply.
    max_reply_bytes: int = 65_536
