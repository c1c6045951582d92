"""Mailbox and path syntax for MAIL FROM and RCPT TO (RFC 5321 §4.1.2, RFC 6531 §3.3).

Strict where the RFC is strict (dot-atoms, quoted strings, domain labels, address literals,
the §4.5.3.1 length limits), tolerant where it asks to be: a source route (`<@a,@b:user@c>`)
is accepted and dropped (§4.1.1.3 / Appendix C). Non-ASCII is allowed by the grammar here; the
caller rejects it unless the transaction uses SMTPUTF8 (RFC 6531).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Path", "PathError", "parse_path", "valid_domain", "valid_ehlo_argument"]

# RFC 6531 §3.3 adds UTF8-non-ascii to atext and qtext. C1 controls (U+0080-U+009F) are left
# out: they are never part of a real address and would reach headers and logs.
_U: Final = "\u00a0-\U0010ffff"
_ATEXT: Final = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U}]"
_DOT_STRING: Final = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# RFC 5321 §4.1.2: qtextSMTP = %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP = "\" %d32-126.
_QUOTED_STRING: Final = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*"'
# The domain is matched loosely here and checked label by label in valid_domain().
_DOMAIN_LOOSE: Final = r"\[[^\[\]\\\s]*\]|[^\s<>@\",:;\[\]\\()]+"
_PATH_RE: Final = re.compile(
    rf"<(?:(?P<adl>@[^:<>\s]+):)?"
    rf"(?:(?P<local>{_DOT_STRING}|{_QUOTED_STRING})@(?P<domain>{_DOMAIN_LOOSE}))?>"
)
_LABEL: Final = re.compile(rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9\-{_U}]*[A-Za-z0-9{_U}])?")
# Hostnames in EHLO/HELO: many real clients announce names with underscores (Windows machine
# names), which RFC 1123 does not allow but which harm nobody; accept them, ASCII only.
_EHLO_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?")

# RFC 5321 §4.5.3.1.1-3 (octets, so UTF-8 addresses are measured after encoding).
MAX_LOCAL_PART: Final = 64
MAX_DOMAIN: Final = 255
MAX_PATH: Final = 256
_MAX_LABEL: Final = 63


class PathError(Exception):
    """The path is unacceptable; `reason` says which rule it broke."""

    def __init__(self, reason: str, *, too_long: bool = False, path_too_long: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_long = too_long
        self.path_too_long = path_too_long


@dataclass(frozen=True, slots=True, init=False)
class Path:
    """A parsed reverse- or forward-path: `mailbox` is "" for the null path `<>`."""

    mailbox: str
    end: int  # index just past the closing ">" in the argument

    def __init__(self, mailbox: str, end: int) -> None:
        object.__setattr__(self, "mailbox", mailbox)  # see events.py, "Made per command"
        object.__setattr__(self, "end", end)


def parse_path(text: str, start: int, *, allow_null: bool, allow_postmaster: bool) -> Path:
    """Parse the `<...>` path that begins at `text[start]`.

    `allow_null`: `<>` is a valid reverse-path (MAIL, RFC 5321 §4.5.5) but no forward-path.
    `allow_postmaster`: RCPT TO:<Postmaster> without a domain (§4.1.1.3) must be accepted.
    """
    if allow_postmaster and text[start : start + 12].lower() == "<postmaster>":
        return Path("postmaster", start + 12)
    match = _PATH_RE.match(text, start)
    if match is None:
        close = text.find(">", start)
        if close != -1 and len(text[start : close + 1].encode()) > MAX_PATH:
            raise PathError("path too long", path_too_long=True)
        raise PathError("not a valid <path>")
    if len(match.group(0).encode()) > MAX_PATH:
        raise PathError("path too long", path_too_long=True)
    if match.group("adl") is not None:
        for hop in match.group("adl").split(","):
            if not hop.startswith("@") or not valid_domain(hop[1:]):
                raise PathError("invalid source route")
    local, domain = match.group("local"), match.group("domain")
    if local is None or domain is None:
        if not allow_null:
            raise PathError("the null path <> is not allowed here")
        return Path("", match.end())
    if len(local.encode()) > MAX_LOCAL_PART:
        raise PathError("local part longer than 64 octets", too_long=True)
    if len(domain.encode()) > MAX_DOMAIN:
        raise PathError("domain longer than 255 octets", too_long=True)
    if not valid_domain(domain):
        raise PathError("invalid domain")
    return Path(f"{local}@{domain}", match.end())


def valid_domain(domain: str) -> bool:
    """A domain (LDH labels, U-labels allowed) or an address literal, RFC 5321 §4.1.2-3."""
    if domain.startswith("["):
        return _valid_address_literal(domain)
    if not domain or len(domain.encode()) > MAX_DOMAIN:
        return False
    return all(
        _LABEL.fullmatch(label) and len(label.encode()) <= _MAX_LABEL for label in domain.split(".")
    )


def valid_ehlo_argument(argument: str) -> bool:
    """The EHLO/HELO argument: a host name or an address literal (RFC 5321 §4.1.1.1)."""
    if argument.startswith("["):
        return _valid_address_literal(argument)
    if not argument or len(argument) > MAX_DOMAIN or not argument.isascii():
        return False
    return all(
        _EHLO_LABEL.fullmatch(label) and len(label) <= _MAX_LABEL for label in argument.split(".")
    )


def _valid_address_literal(literal: str) -> bool:
    """`[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3); general literals are refused."""
    if len(literal) < 3 or not literal.endswith("]"):
        return False
    inner = literal[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True
