"""Checks of the ``[[dkim]]`` tables that need no file: names, duplicates, a path given.

The key files themselves are read when the daemon starts
(`dispatch.security.dkim_keys.load_key`), so that an example configuration still loads on a
machine without the keys; a missing, unreadable, group-readable or malformed key file stops
the start with a message naming ``dkim[i].private_key_file``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Final

from dispatch.config.settings import DkimKey

# RFC 6376 §3.1: a selector is one or more dot-separated sub-domain labels; d= is a domain.
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
SELECTOR: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
DOMAIN: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")


def domain_problem(domain: str) -> str | None:
    """What is wrong with ``domain`` as a signing domain, or None."""
    if DOMAIN.fullmatch(domain.rstrip(".")):
        return None
    return f"{domain!r} is not a domain name; use the sender's domain, e.g. 'example.com'"


def selector_problem(selector: str) -> str | None:
    """What is wrong with ``selector``, or None."""
    if SELECTOR.fullmatch(selector):
        return None
    return (
        f"{selector!r} is not a selector: letters, digits and hyphens, labels joined by dots "
        "(e.g. 'dispatch' or 'mail2026')"
    )


def dkim_problems(keys: Sequence[DkimKey]) -> Iterator[tuple[str, str]]:
    """``(key path, message)`` for each problem of the ``[[dkim]]`` tables."""
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        where = f"dkim[{i}]"
        if (problem := domain_problem(key.domain)) is not None:
            yield f"{where}.domain", problem
        domain = key.domain.rstrip(".").lower()
        if domain in seen:
            yield (
                f"{where}.domain",
                f"{key.domain!r} already has a key in dkim[{seen[domain]}]; one key signs a "
                "domain (publish a new selector and replace the key to rotate it)",
            )
        seen.setdefault(domain, i)
        if (problem := selector_problem(key.selector)) is not None:
            yield f"{where}.selector", problem
        if not key.private_key_file:
            yield (
                f"{where}.private_key_file",
                f"is empty; make a key with `dispatch dkim generate {key.domain}` and give "
                "its path",
            )
