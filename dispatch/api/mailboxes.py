"""Mailboxes in the address fields of an API request (``from``, ``to``, ``Reply-To``, ...).

Pure: no I/O. One field value may hold several mailboxes separated by commas (RFC 5322 §3.4);
:func:`split_address_list` cuts it at the commas that separate them, :func:`parse_mailbox`
reads one (``ann@x.test`` or ``Ann <ann@x.test>``) or says, in a sentence for the client, why
it is not one. Addresses must be ASCII: an internationalised domain is accepted in its
``xn--`` form (converting it here would need IDNA 2008, which the standard library lacks),
and the address must also be one SMTP can carry (:func:`dispatch.smtp.addresses.parse_path`).
"""

from __future__ import annotations

from collections.abc import Iterator
from email import errors as email_errors
from email import policy as email_policy
from email.headerregistry import Address
from typing import Final

from dispatch.api.problems import quote
from dispatch.smtp.addresses import PathError, parse_path

__all__ = ["MAX_LINE", "parse_mailbox", "split_address_list"]

# RFC 5322 §2.1.1: a line is at most 998 characters. A custom header must fit on one line
# unfolded, a subject or one address is held to the same bound.
MAX_LINE: Final = 998

# The standard library's address parser; the same registry every email policy shares.
_HEADERS: Final = email_policy.SMTP.header_factory
# Obsolete syntax (RFC 5322 §4) is fine: the header is written anew from the parts.
_TOLERATED: Final = (email_errors.ObsoleteHeaderDefect, email_errors.NonASCIILocalPartDefect)


def split_address_list(value: str) -> Iterator[str]:
    """Split at the commas between addresses, not those in quotes, comments or <...>."""
    start, quoted, escaped, comment, angle = 0, False, False, 0, False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or comment):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif comment:
            comment += {"(": 1, ")": -1}.get(char, 0)
        elif char == '"':
            quoted = True
        elif char == "(":
            comment = 1
        elif char in "<>":
            angle = char == "<"
        elif char == "," and not angle:
            if piece := value[start:i].strip():
                yield piece
            start = i + 1
    if piece := value[start:].strip():
        yield piece


def parse_mailbox(piece: str) -> Address | str:
    """One mailbox (``ann@x.test`` or ``Ann <ann@x.test>``), or the problem with it."""
    shown = quote(piece)
    if len(piece) > MAX_LINE:
        return f"{shown} is longer than {MAX_LINE} characters"
    try:
        header = _HEADERS("to", piece)
        addresses, groups, defects = header.addresses, header.groups, header.defects
    except (email_errors.HeaderParseError, ValueError, IndexError, AttributeError):
        # The stdlib parser is not total: ':;a' raises AttributeError (CPython 3.13.0).
        addresses, groups, defects = (), (), (email_errors.HeaderParseError(),)
    defects = [d for d in defects if not isinstance(d, _TOLERATED)]
    if (missing := _missing_part(piece, shown)) is not None:
        return missing
    if defects or len(addresses) != 1 or any(g.display_name is not None for g in groups):
        return (
            f"{shown} is not an address (RFC 5322); send 'name@example.com' or "
            "'Name <name@example.com>', several separated by commas"
        )
    address: Address = addresses[0]
    if not address.username or not address.domain:
        return f"{shown} needs a local part and a domain, such as name@example.com"
    if not address.addr_spec.isascii():
        return (
            f"{shown}: addresses must be ASCII; write an internationalised domain in its "
            "xn-- form (bücher.example → xn--bcher-kva.example)"
        )
    try:
        parse_path(f"<{address.addr_spec}>", 0, allow_null=False, allow_postmaster=False)
    except PathError as exc:
        return f"{shown} cannot be used in SMTP: {exc.reason}"
    return address


def _missing_part(piece: str, shown: str) -> str | None:
    """The clearest explanation for an address without its @, domain or local part."""
    # For the explanation only: the angle-addr comes last, after any display name.
    spec = piece[piece.rfind("<") + 1 : piece.rfind(">")] if "<" in piece else piece
    if "@" not in spec:
        return f"{shown} has no @domain; send an address such as name@example.com"
    if spec.strip().endswith("@"):
        return f"{shown} has no domain after the @; send an address such as name@example.com"
    if spec.strip().startswith("@"):
        return f"{shown} has no local part before the @; send an address such as name@example.com"
    return None
