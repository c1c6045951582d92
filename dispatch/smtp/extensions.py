"""What a server offers, as read from its EHLO reply (RFC 5321 §4.1.1.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .replies import Reply

__all__ = ["Extensions"]


@dataclass(frozen=True, slots=True)
class Extensions:
    """The service extensions a server announced in its EHLO reply.

    `keywords` maps every upper-cased keyword to the rest of its line; the fields decode the
    ones the relay uses. `size` is the server's fixed maximum message size (RFC 1870), None
    if it announced none or no limit (`SIZE` alone or `SIZE 0`).
    """

    keywords: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    pipelining: bool = False  # RFC 2920
    size: int | None = None  # RFC 1870
    starttls: bool = False  # RFC 3207
    auth: frozenset[str] = frozenset()  # RFC 4954: mechanism names, upper-cased
    smtputf8: bool = False  # RFC 6531
    eightbitmime: bool = False  # RFC 6152
    chunking: bool = False  # RFC 3030
    enhancedstatuscodes: bool = False  # RFC 2034

    @classmethod
    def from_ehlo_reply(cls, reply: Reply) -> Extensions:
        """Read the extension lines (every line after the first) of a 250 EHLO reply."""
        keywords: dict[str, str] = {}
        for line in reply.lines[1:]:
            keyword, _, rest = line.strip().partition(" ")
            # Old servers announce "AUTH=LOGIN PLAIN" (pre-RFC 4954 drafts).
            if keyword.upper().startswith("AUTH="):
                keyword, rest = "AUTH", f"{keyword[5:]} {rest}"
            if keyword:
                key = keyword.upper()
                keywords[key] = f"{keywords[key]} {rest}".strip() if key in keywords else rest
        size: int | None = None
        size_arg = keywords.get("SIZE", "").strip()
        if size_arg.isdigit() and int(size_arg) > 0:
            size = int(size_arg)
        return cls(
            keywords=MappingProxyType(keywords),
            pipelining="PIPELINING" in keywords,
            size=size,
            starttls="STARTTLS" in keywords,
            auth=frozenset(m.upper() for m in keywords.get("AUTH", "").split()),
            smtputf8="SMTPUTF8" in keywords,
            eightbitmime="8BITMIME" in keywords,
            chunking="CHUNKING" in keywords,
            enhancedstatuscodes="ENHANCEDSTATUSCODES" in keywords,
        )

    def has(self, keyword: str) -> bool:
        """Did the server announce this keyword?"""
        return keyword.upper() in self.keywords
