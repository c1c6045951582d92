"""Parsing one client command line into an event (RFC 5321 §4.1, plus the extensions Dispatch
offers: SIZE, 8BITMIME, SMTPUTF8, CHUNKING, STARTTLS, AUTH, DSN).

Strict but RFC-correct: the verb is case-insensitive, arguments follow the RFC grammar, and
every line that is not an acceptable command becomes an event carrying the reply to send.
Sequencing (is MAIL allowed now?) is not decided here but by the state table in `_state`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from . import replies
from .addresses import PathError, parse_path, valid_ehlo_argument
from .dsn import mail_dsn, rcpt_dsn
from .events import (
    Auth,
    Bdat,
    CommandError,
    Data,
    Ehlo,
    Event,
    Helo,
    Help,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    UnknownCommand,
    Vrfy,
    WrongProtocol,
)
from .limits import Limits
from .replies import Reply

__all__ = ["parse_command", "sanitise_verb"]

# Request methods of HTTP/1.1 (RFC 9110 §9) and WebDAV's common ones: a browser or an HTTP
# client pointed at the SMTP port. Answered 502 and closed (SPEC §3).
_HTTP_METHODS: Final = frozenset(
    {"GET", "POST", "HEAD", "PUT", "DELETE", "CONNECT", "OPTIONS", "PATCH", "TRACE", "PROPFIND"}
)
# The shape of an HTTP request line, whatever its method: `METHOD target HTTP/1.1`.
_HTTP_REQUEST_LINE: Final = re.compile(rb"[!-~]+ [!-~]+ HTTP/\d(?:\.\d)?")
# Verbs from RFC 821/5321 and old extensions that Dispatch knows but does not offer: 502.
_NOT_IMPLEMENTED: Final = frozenset({"EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"})
_SAFE_VERB: Final = re.compile(rb"[A-Za-z0-9]{1,16}")
# esmtp-keyword and esmtp-value, RFC 5321 §4.1.2.
_KEYWORD: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_VALUE: Final = re.compile(r"[\x21-\x3c\x3e-\x7e]+")
# RFC 4954 §4: a SASL mechanism name is 1-20 of A-Z, 0-9, "-", "_".
_MECHANISM: Final = re.compile(r"[A-Za-z0-9\-_]{1,20}")
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_PRINTABLE: Final = re.compile(r"[\x20-\x7e]*")
# RFC 1870 §4: size-value = 1*20DIGIT.
_SIZE: Final = re.compile(r"[0-9]{1,20}")
# RFC 3030 §2: chunk-size = 1*DIGIT; twenty digits already exceed any real message.
_BDAT: Final = re.compile(r"([0-9]{1,20})(?: +(LAST))?", re.IGNORECASE)


def sanitise_verb(raw: bytes) -> str:
    """The verb made safe for logs and metric labels: A-Z/0-9, at most 16, else "unknown"."""
    return raw.upper().decode("ascii") if _SAFE_VERB.fullmatch(raw) else "unknown"


def parse_command(line: bytes, limits: Limits, *, smtputf8: bool = False) -> Event:
    """Turn one command line (without its CRLF) into an event.

    `smtputf8` tells RCPT whether the transaction's MAIL carried SMTPUTF8 (RFC 6531), which
    decides whether a non-ASCII recipient is acceptable.
    """
    raw_verb, _, _ = line.partition(b" ")
    verb = sanitise_verb(raw_verb)
    if verb in _HTTP_METHODS or _HTTP_REQUEST_LINE.fullmatch(line):
        return WrongProtocol(verb)
    parser = _PARSERS.get(verb)
    if parser is None:
        reply = (
            replies.COMMAND_NOT_IMPLEMENTED if verb in _NOT_IMPLEMENTED else replies.SYNTAX_ERROR
        )
        return UnknownCommand(verb, reply)
    if verb in ("MAIL", "RCPT"):
        max_len = limits.max_mail_line
    elif verb == "AUTH":
        max_len = limits.max_auth_line
    else:
        max_len = limits.max_command_line
    if len(line) + 2 > max_len:
        return CommandError(verb, replies.LINE_TOO_LONG)
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return CommandError(verb, replies.INVALID_UTF8)
    # A single space separates verb and argument (RFC 5321 §4.1.1); trailing spaces are
    # tolerated because well-known clients send them and they change no meaning.
    arg = text[len(raw_verb) + 1 :].rstrip(" ") if len(text) > len(raw_verb) else ""
    if verb not in ("MAIL", "RCPT") and not (arg.isascii() and _PRINTABLE.fullmatch(arg)):
        return CommandError(verb, replies.PARAMETER_SYNTAX)
    return parser(verb, arg, smtputf8)


def _error(verb: str, reply: Reply) -> CommandError:
    return CommandError(verb, reply)


def _no_argument(make: Callable[[], Event]) -> Callable[[str, str, bool], Event]:
    # RFC 5321 §4.1.1.4-10 and RFC 3207 §4: these take no argument; one is a syntax error.
    def parse(verb: str, arg: str, _utf8: bool) -> Event:
        return make() if not arg else _error(verb, replies.PARAMETER_SYNTAX)

    return parse


def _parse_hello(verb: str, arg: str, _utf8: bool) -> Event:
    if not valid_ehlo_argument(arg):
        return _error(verb, Reply.of(501, f"{verb} needs a domain or address literal",
                                     enhanced="5.5.4"))  # fmt: skip
    return Ehlo(arg) if verb == "EHLO" else Helo(arg)


def _parse_mail(verb: str, arg: str, _utf8: bool) -> Event:
    if arg[:5].upper() != "FROM:":
        return _error(verb, replies.PARAMETER_SYNTAX)
    start = 6 if arg[5:6] == " " else 5
    try:
        path = parse_path(arg, start, allow_null=True, allow_postmaster=False)
    except PathError as exc:
        return _error(verb, _path_reply(exc, sender=True))
    params = _parse_params(arg[path.end :])
    if isinstance(params, Reply):
        return _error(verb, params)
    size: int | None = None
    body: str | None = None
    for key, value in params.items():
        if key == "SIZE":  # RFC 1870
            if value is None or not _SIZE.fullmatch(value):
                return _error(verb, replies.PARAMETER_SYNTAX)
            size = int(value)
        elif key == "BODY":  # RFC 6152
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                return _error(verb, replies.PARAMETER_SYNTAX)
            body = value.upper()
        elif key == "SMTPUTF8":  # RFC 6531 §3.4: no value
            if value is not None:
                return _error(verb, replies.PARAMETER_SYNTAX)
        elif key == "AUTH":  # RFC 4954 §5: a server offering AUTH must accept AUTH=<mailbox>
            if value is None:
                return _error(verb, replies.PARAMETER_SYNTAX)
        elif key not in ("RET", "ENVID"):  # RFC 3461 §4.3-4.4, checked below
            return _error(verb, replies.UNKNOWN_PARAMETER)
    if isinstance(checked := mail_dsn(params), Reply):
        return _error(verb, checked)
    utf8 = "SMTPUTF8" in params
    if not utf8 and not path.mailbox.isascii():
        return _error(verb, replies.NON_ASCII_ADDRESS)
    return Mail(path.mailbox, size=size, body=body, smtputf8=utf8, params=params)


def _parse_rcpt(verb: str, arg: str, utf8: bool) -> Event:
    if arg[:3].upper() != "TO:":
        return _error(verb, replies.PARAMETER_SYNTAX)
    start = 4 if arg[3:4] == " " else 3
    try:
        path = parse_path(arg, start, allow_null=False, allow_postmaster=True)
    except PathError as exc:
        return _error(verb, _path_reply(exc, sender=False))
    params = _parse_params(arg[path.end :])
    if isinstance(params, Reply):
        return _error(verb, params)
    if any(key not in ("NOTIFY", "ORCPT") for key in params):  # RFC 3461 §4.1-4.2 only
        return _error(verb, replies.UNKNOWN_PARAMETER)
    if isinstance(checked := rcpt_dsn(params), Reply):
        return _error(verb, checked)
    if not utf8 and not path.mailbox.isascii():
        return _error(verb, replies.NON_ASCII_ADDRESS)
    return Rcpt(path.mailbox, params)


def _path_reply(exc: PathError, *, sender: bool) -> Reply:
    if exc.path_too_long:
        return replies.SENDER_PATH_TOO_LONG if sender else replies.RECIPIENT_PATH_TOO_LONG
    if exc.too_long:
        return replies.SENDER_PART_TOO_LONG if sender else replies.RECIPIENT_PART_TOO_LONG
    return replies.BAD_SENDER_SYNTAX if sender else replies.BAD_RECIPIENT_SYNTAX


def _parse_params(text: str) -> dict[str, str | None] | Reply:
    """ESMTP parameters after the path: ` KEY[=value]...` (RFC 5321 §4.1.2)."""
    if text and not text.startswith(" "):
        return replies.PARAMETER_SYNTAX
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.fullmatch(key) or (eq and not _VALUE.fullmatch(value)):
            return replies.PARAMETER_SYNTAX
        key = key.upper()
        if key in params:
            return replies.PARAMETER_SYNTAX
        params[key] = value if eq else None
    return params


def _parse_bdat(verb: str, arg: str, _utf8: bool) -> Event:
    match = _BDAT.fullmatch(arg)
    if match is None:
        return _error(verb, replies.PARAMETER_SYNTAX)
    return Bdat(int(match.group(1)), last=match.group(2) is not None)


def _parse_auth(verb: str, arg: str, _utf8: bool) -> Event:
    mechanism, _, initial = arg.partition(" ")
    if not _MECHANISM.fullmatch(mechanism):
        return _error(verb, replies.PARAMETER_SYNTAX)
    # RFC 4954 §4: the initial response is base64, or "=" for an empty one.
    if initial and initial != "=" and not _BASE64.fullmatch(initial):
        return _error(verb, replies.AUTH_BAD_BASE64)
    return Auth(mechanism.upper(), initial or None)


def _parse_vrfy(verb: str, arg: str, _utf8: bool) -> Event:
    return Vrfy(arg) if arg else _error(verb, replies.PARAMETER_SYNTAX)


def _parse_help(verb: str, arg: str, _utf8: bool) -> Event:
    return Help(arg or None)


def _parse_noop(verb: str, arg: str, _utf8: bool) -> Event:
    return Noop()  # RFC 5321 §4.1.1.9: a parameter is allowed and ignored


_PARSERS: Final[dict[str, Callable[[str, str, bool], Event]]] = {
    "EHLO": _parse_hello,
    "HELO": _parse_hello,
    "MAIL": _parse_mail,
    "RCPT": _parse_rcpt,
    "DATA": _no_argument(Data),
    "BDAT": _parse_bdat,
    "RSET": _no_argument(Rset),
    "NOOP": _parse_noop,
    "QUIT": _no_argument(Quit),
    "HELP": _parse_help,
    "VRFY": _parse_vrfy,
    "STARTTLS": _no_argument(StartTls),
    "AUTH": _parse_auth,
}
