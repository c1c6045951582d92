"""SMTP replies: the `Reply` value, its wire form in both directions, and the standard replies.

A reply is a three-digit code (RFC 5321 §4.2), one or more lines of text and, optionally, an
enhanced status code (RFC 3463, advertised as ENHANCEDSTATUSCODES, RFC 2034) which `serialise`
puts at the start of every line. The constants below are what the core suggests in the events
it cannot let pass; the application sends them as they are or builds its own `Reply`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from .errors import RemoteProtocolError

# RFC 3463 §2: class "." subject "." detail; the class is 2, 4 or 5 and must agree with the
# first digit of the reply code (there is no enhanced code for 3xx replies).
_ENHANCED: Final = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
# RFC 5321 §4.2: textstring = 1*(%d09 / %d32-126). UTF-8 is tolerated in our own text (RFC 6531
# servers may send it), but never a control character: a CR or LF would inject a reply line.
_BAD_TEXT: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_REPLY_LINE: Final = re.compile(rb"([2-5][0-5][0-9])(?:([ -])(.*))?\r\n", re.DOTALL)


@dataclass(frozen=True, slots=True, init=False)
class Reply:
    """One SMTP reply: a code, one or more text lines and an optional enhanced status code.

    `lines` holds the text without code or enhanced code; `serialise` adds both to every line.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None
    _wire: bytes | None = field(init=False, repr=False, compare=False)

    def __init__(self, code: int, lines: tuple[str, ...], enhanced: str | None = None) -> None:
        if not 200 <= code <= 599:
            raise ValueError(f"SMTP reply codes run from 200 to 599, not {code}")
        if not lines:
            raise ValueError("a reply needs at least one line (it may be empty)")
        for line in lines:
            if _BAD_TEXT.search(line):
                raise ValueError(f"control character in reply text {line!r}")
        if enhanced is not None:
            match = _ENHANCED.fullmatch(enhanced)
            if match is None or match.group(1) != str(code)[0]:
                raise ValueError(f"enhanced code {enhanced!r} does not fit reply {code}")
        # Written out, as events.py says under "Made per command".
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "enhanced", enhanced)
        object.__setattr__(self, "_wire", None)

    @classmethod
    def of(cls, code: int, *lines: str, enhanced: str | None = None) -> Reply:
        """`Reply.of(250, "Ok", enhanced="2.0.0")`: the short way to build a reply."""
        return cls(code, lines or ("",), enhanced)

    @property
    def text(self) -> str:
        """All lines joined with newlines (for logs and error messages)."""
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        """2xx: the command was accepted (RFC 5321 §4.2.1)."""
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        """3xx: go on (354 for DATA, 334 for AUTH)."""
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        """4xx: try again later."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """5xx: do not try again as it is."""
        return self.code >= 500

    def serialise(self) -> bytes:
        """The wire form: `250-first\\r\\n250 last\\r\\n` (RFC 5321 §4.2.1); made once per
        reply, as the standard replies below are sent many times in every session."""
        wire = self._wire
        if wire is None:
            prefix = f"{self.enhanced} " if self.enhanced else ""
            last = len(self.lines) - 1
            wire = b"".join(
                f"{self.code}{' ' if i == last else '-'}{prefix}{line}\r\n".encode()
                for i, line in enumerate(self.lines)
            )
            object.__setattr__(self, "_wire", wire)
        return wire

    def __str__(self) -> str:
        prefix = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{prefix} {' / '.join(self.lines)}"


@dataclass(frozen=True, slots=True, init=False)
class ReplyLine:
    """One line of a reply as received: its code, whether it is the last line, its text."""

    code: int
    final: bool
    text: str

    def __init__(self, code: int, final: bool, text: str) -> None:
        object.__setattr__(self, "code", code)  # see events.py, "Made per command"
        object.__setattr__(self, "final", final)
        object.__setattr__(self, "text", text)


def parse_reply_line(line: bytes) -> ReplyLine:
    """Parse one reply line (CRLF included) as received by a client.

    RFC 5321 §4.2: `Reply-code [ ("-" / SP) textstring ] CRLF`. Anything else means the server
    and client no longer agree on the dialogue: `RemoteProtocolError`.
    """
    match = _REPLY_LINE.fullmatch(line)
    if match is None:
        raise RemoteProtocolError(f"malformed SMTP reply line {line[:80]!r}")
    code, sep, text = match.groups()
    # Servers do send Latin-1 or broken UTF-8 in reply text; the text is only ever shown.
    decoded = (text or b"").decode("utf-8", errors="replace")
    if _BAD_TEXT.search(decoded):
        raise RemoteProtocolError(f"control character in SMTP reply line {line[:80]!r}")
    return ReplyLine(int(code), sep != b"-", decoded)


def assemble_reply(lines: Sequence[ReplyLine]) -> Reply:
    """Build a `Reply` from its received lines, splitting off the enhanced status code.

    Every line of a multi-line reply must carry the same code (RFC 5321 §4.2.1).
    """
    code = lines[0].code
    if any(line.code != code for line in lines):
        raise RemoteProtocolError(f"multi-line reply mixes codes: {[ln.code for ln in lines]}")
    enhanced: str | None = None
    match = _ENHANCED.match(lines[0].text)
    first_digit = str(code)[0]
    if match and match.group(1) == first_digit:
        rest = lines[0].text[match.end() :]
        if not rest or rest.startswith(" "):
            enhanced = match.group(0)
    texts: list[str] = []
    for line in lines:
        text = line.text
        if enhanced is not None and (text == enhanced or text.startswith(enhanced + " ")):
            text = text[len(enhanced) + 1 :]
        texts.append(text)
    return Reply(code, tuple(texts), enhanced)


# --- Standard replies -------------------------------------------------------------------------
# Codes from RFC 5321 §4.2.2-4.2.3, enhanced codes from RFC 3463 and the extension RFCs.

SERVICE_CLOSING: Final = Reply.of(221, "Bye", enhanced="2.0.0")
OK: Final = Reply.of(250, "Ok", enhanced="2.0.0")
SENDER_OK: Final = Reply.of(250, "Sender ok", enhanced="2.1.0")
RECIPIENT_OK: Final = Reply.of(250, "Recipient ok", enhanced="2.1.5")
HELP: Final = Reply.of(214, "See RFC 5321", enhanced="2.0.0")
# RFC 5321 §3.5.3: 252 when the server will not verify but will accept mail for the address.
CANNOT_VRFY: Final = Reply.of(
    252, "Cannot VRFY user, but will accept message and attempt delivery", enhanced="2.5.0"
)
START_DATA: Final = Reply.of(354, "End data with <CR><LF>.<CR><LF>")
READY_TO_START_TLS: Final = Reply.of(220, "Ready to start TLS", enhanced="2.0.0")

SHUTTING_DOWN: Final = Reply.of(421, "Service shutting down, closing connection", enhanced="4.3.2")
TIMEOUT: Final = Reply.of(421, "Timeout exceeded, closing connection", enhanced="4.4.2")
TOO_MANY_ERRORS: Final = Reply.of(421, "Too many errors, closing connection", enhanced="4.7.0")
TOO_MANY_CONNECTIONS: Final = Reply.of(421, "Too many connections, try later", enhanced="4.3.2")
TLS_NOT_AVAILABLE: Final = Reply.of(454, "TLS not available", enhanced="4.7.0")
# The spool could not take the message (RFC 3463 X.3.1: the disk is full; X.3.0: any other
# local fault). Transient either way: nothing was kept, and the client retries later.
INSUFFICIENT_STORAGE: Final = Reply.of(
    452, "Insufficient system storage, try again later", enhanced="4.3.1"
)
LOCAL_ERROR: Final = Reply.of(451, "Local error in processing, try again later", enhanced="4.3.0")
# RFC 5321 §4.5.3.1.10 and RFC 3463 X.5.3: too many recipients is transient, the client
# sends the rest in a further transaction.
TOO_MANY_RECIPIENTS: Final = Reply.of(452, "Too many recipients", enhanced="4.5.3")

SYNTAX_ERROR: Final = Reply.of(500, "Syntax error, command unrecognized", enhanced="5.5.2")
# X.5.6 is registered (RFC 4954) for over-long authentication lines; Dispatch uses it for every
# over-long line so that one code means "line too long" in its logs and metrics.
LINE_TOO_LONG: Final = Reply.of(500, "Line too long", enhanced="5.5.6")
TEXT_LINE_TOO_LONG: Final = Reply.of(
    500,
    "Line too long in message data (RFC 5321 limits text lines to 1000 octets)",
    enhanced="5.5.6",
)
PARAMETER_SYNTAX: Final = Reply.of(501, "Syntax error in parameters or arguments", enhanced="5.5.4")
INVALID_UTF8: Final = Reply.of(501, "Command line is not valid UTF-8", enhanced="5.5.2")
COMMAND_NOT_IMPLEMENTED: Final = Reply.of(502, "Command not implemented", enhanced="5.5.1")
WRONG_PROTOCOL: Final = Reply.of(
    502, "This is an SMTP server, not an HTTP server", enhanced="5.5.1"
)
BAD_SEQUENCE: Final = Reply.of(503, "Bad sequence of commands", enhanced="5.5.1")
EHLO_FIRST: Final = Reply.of(503, "Send EHLO or HELO first", enhanced="5.5.1")
NESTED_MAIL: Final = Reply.of(503, "Sender already specified", enhanced="5.5.1")
NEED_MAIL: Final = Reply.of(503, "Need MAIL before RCPT", enhanced="5.5.1")
NEED_RCPT: Final = Reply.of(503, "Need RCPT before DATA or BDAT", enhanced="5.5.1")
# RFC 3030 §3: DATA and BDAT cannot be mixed in one transaction.
DATA_AFTER_BDAT: Final = Reply.of(503, "DATA not allowed after BDAT", enhanced="5.5.1")
TLS_ALREADY_ACTIVE: Final = Reply.of(503, "TLS already active", enhanced="5.5.1")
ALREADY_AUTHENTICATED: Final = Reply.of(503, "Already authenticated", enhanced="5.5.1")
# RFC 7504: 521 means "does not accept mail"; Dispatch also ends the session with it when the
# client sent a bare CR or LF in message data (SMTP smuggling, RFC 5321 §2.3.8).
BARE_LINE_ENDING: Final = Reply.of(
    521, "Bare CR or LF in message data is not allowed; lines must end in CRLF", enhanced="5.5.2"
)
# RFC 2045 §2.7-2.8: 7bit and 8bit text never hold NUL; only "binary" may (BINARYMIME, RFC 3030
# §3), which Dispatch does not offer. A next hop that drops NULs would see other text (and
# possibly another end of data) than Dispatch did, so such a message is refused, not relayed.
NUL_IN_DATA: Final = Reply.of(
    554, "NUL characters are not allowed in message data", enhanced="5.6.0"
)
# RFC 5321 §4.3.1 (the client waits for the greeting) and RFC 2920 §3.1 (DATA ends a pipelined
# group: the client waits for the 354). Postfix's smtpd_forbid_unauth_pipelining answers
# "554 5.5.0 Error: SMTP protocol synchronization"; these say which wait was skipped.
SYNC_BEFORE_GREETING: Final = Reply.of(
    554,
    "Error: SMTP protocol synchronization: data sent before the greeting; wait for the 220",
    enhanced="5.5.0",
)
SYNC_AFTER_DATA: Final = Reply.of(
    554,
    "Error: SMTP protocol synchronization: data sent after DATA before the 354; wait for it",
    enhanced="5.5.0",
)
MESSAGE_TOO_BIG: Final = Reply.of(
    552, "Message size exceeds fixed maximum message size", enhanced="5.3.4"
)
BAD_SENDER_SYNTAX: Final = Reply.of(501, "Bad sender address syntax", enhanced="5.1.7")
BAD_RECIPIENT_SYNTAX: Final = Reply.of(501, "Bad recipient address syntax", enhanced="5.1.3")
# RFC 5321 §4.5.3.1.10 "501 Path too long"; §4.5.3.1.1-2 local-part and domain limits.
SENDER_PATH_TOO_LONG: Final = Reply.of(501, "Path too long", enhanced="5.1.7")
RECIPIENT_PATH_TOO_LONG: Final = Reply.of(501, "Path too long", enhanced="5.1.3")
SENDER_PART_TOO_LONG: Final = Reply.of(
    553, "Local part or domain too long in sender address", enhanced="5.1.7"
)
RECIPIENT_PART_TOO_LONG: Final = Reply.of(
    553, "Local part or domain too long in recipient address", enhanced="5.1.3"
)
# RFC 6531 §3.5: a non-ASCII address needs the SMTPUTF8 parameter on MAIL.
NON_ASCII_ADDRESS: Final = Reply.of(
    553, "Non-ASCII address needs the SMTPUTF8 parameter", enhanced="5.6.7"
)
# RFC 5321 §4.1.1.11: parameters not recognized or not implemented.
UNKNOWN_PARAMETER: Final = Reply.of(
    555, "MAIL FROM/RCPT TO parameters not recognized or not implemented", enhanced="5.5.4"
)
NO_VALID_RECIPIENTS: Final = Reply.of(554, "No valid recipients", enhanced="5.5.1")
ACCESS_DENIED: Final = Reply.of(554, "Access denied", enhanced="5.7.1")
LOOP_DETECTED: Final = Reply.of(554, "Too many Received headers: mail loop", enhanced="5.4.6")

# AUTH (RFC 4954 §6).
AUTH_SUCCEEDED: Final = Reply.of(235, "Authentication successful", enhanced="2.7.0")
AUTH_REQUIRED: Final = Reply.of(530, "Authentication required", enhanced="5.7.0")
AUTH_FAILED: Final = Reply.of(535, "Authentication credentials invalid", enhanced="5.7.8")
ENCRYPTION_REQUIRED: Final = Reply.of(
    538, "Encryption required for requested authentication mechanism", enhanced="5.7.11"
)
AUTH_MECHANISM_UNSUPPORTED: Final = Reply.of(
    504, "Unrecognized authentication type", enhanced="5.5.4"
)
AUTH_CANCELLED: Final = Reply.of(501, "Authentication cancelled", enhanced="5.7.0")
AUTH_BAD_BASE64: Final = Reply.of(501, "Cannot decode the response", enhanced="5.5.2")


@functools.lru_cache(maxsize=8)
def greeting(server_name: str) -> Reply:
    """The 220 banner sent when a client connects (RFC 5321 §4.2, §3.1); one per name."""
    return Reply.of(220, f"{server_name} ESMTP ready")


def ehlo(server_name: str, client_name: str, keywords: Sequence[str]) -> Reply:
    """The multi-line EHLO reply: a greeting line, then one line per extension keyword.

    No enhanced code: the extension lines are parsed as keywords (RFC 5321 §4.1.1.1).
    """
    return Reply(250, (f"{server_name} greets {client_name}", *keywords))


def helo(server_name: str) -> Reply:
    """The one-line reply to HELO."""
    return Reply.of(250, server_name)


def queued(queue_id: str) -> Reply:
    """Accepting a message once it is safely spooled (SPEC §3)."""
    return Reply.of(250, f"Ok: queued as {queue_id}", enhanced="2.0.0")


def chunk_received(size: int) -> Reply:
    """Accepting one BDAT chunk that is not the last (RFC 3030 §2)."""
    return Reply.of(250, f"{size} octets received", enhanced="2.0.0")


def auth_challenge(base64_text: str) -> Reply:
    """A 334 SASL challenge (RFC 4954 §4); the text is already base64, possibly empty."""
    return Reply.of(334, base64_text)
