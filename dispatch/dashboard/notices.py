"""What the operator pages share: who acts (:func:`actor`), the result of an action shown
after its redirect (:class:`Notices`), and checking addresses typed into a form.

An action (a form ``POST``) answers with a redirect to a page (POST-redirect-GET, so a reload
does not repeat it). What it did — "released through relay smarthost: 250 2.0.0 Ok" — is
kept by :class:`Notices` under a random token that the redirect's ``?notice=`` names; the
page shows it once. Notices live in memory (they are seconds old when read), at most
:data:`MAX_NOTICES`, and are never shared between sessions by anything but the token.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Sequence
from typing import Final, Literal

import attrs
from quart import request

MAX_NOTICES: Final = 64
"""Notices kept per page module: enough for several operators' actions between reads."""

LIVE_VERSION_HEADER: Final = "X-Live-Version"
"""The version of a live fragment (``static/live.js`` sends it back as ``?version=``)."""

MAX_ADDRESSES: Final = 100  # recipients of one release: SPEC §3's per-transaction limit
MAX_ADDRESS_LENGTH: Final = 256  # SPEC §3

NoticeKind = Literal["ok", "warn", "bad"]


@attrs.frozen
class Notice:
    """One action's result: a headline, details (an upstream's reply lines), a kind."""

    title: str
    kind: NoticeKind = "ok"
    details: tuple[str, ...] = ()


class Notices:
    """Results of actions waiting for their page (see the module docstring). Owns a bounded
    dict; plain state on the Trio thread."""

    def __init__(self) -> None:
        self._waiting: collections.OrderedDict[str, Notice] = collections.OrderedDict()

    def keep(self, notice: Notice) -> str:
        """Keep ``notice``; return the token to put in the redirect (``?notice=``)."""
        token = secrets.token_urlsafe(12)
        self._waiting[token] = notice
        while len(self._waiting) > MAX_NOTICES:
            self._waiting.popitem(last=False)
        return token

    def take(self) -> Notice | None:
        """The notice the request's ``?notice=`` names, once (None: none or already read)."""
        token = request.args.get("notice")
        return self._waiting.pop(token, None) if token else None


def actor() -> str:
    """Who acts, for the audit log: the dashboard's admin and the address they came from."""
    return f"dashboard admin from {request.remote_addr or 'an unknown address'}"


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be an envelope address (None: it can)."""
    if not address:
        return "an address is empty"
    if len(address) > MAX_ADDRESS_LENGTH:
        return f"{address[:40]!r}… is longer than {MAX_ADDRESS_LENGTH} characters"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return f"{address!r} is not an address like user@example.com"
    if not address.isprintable() or any(c.isspace() or c in "<>" for c in address):
        return f"{address!r} contains spaces, angle brackets or control characters"
    return None


def parse_addresses(text: str) -> tuple[list[str], list[str]]:
    """The addresses of a form field (separated by commas, semicolons or whitespace), and
    the problems found; no problems and at least one address means the list is usable."""
    addresses = [part for part in text.replace(";", ",").replace(",", " ").split() if part]
    problems = [p for p in map(address_problem, addresses) if p is not None]
    if not addresses:
        problems.append("give at least one address, like user@example.com")
    if len(addresses) > MAX_ADDRESSES:
        problems.append(f"at most {MAX_ADDRESSES} addresses at once, not {len(addresses)}")
    return addresses, problems


def joined(values: Sequence[str]) -> str:
    return ", ".join(values)
