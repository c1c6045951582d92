"""MTA-STS (RFC 8461) values: the ``_mta-sts`` TXT record, the policy file, MX matching.

Pure functions and frozen values, no I/O: the fetching and the cache are
`dispatch.relays.sts_cache`; applying a policy to a delivery is `dispatch.relays.mx`.

A policy is parsed as RFC 8461 §3.2 says: ``key: value`` lines ended by CRLF or LF,
``version: STSv1`` first-class, ``mode`` one of enforce, testing or none, ``max_age`` in
seconds (at most 31557600), and one ``mx`` line per allowed host pattern (at least one unless
the mode is none). Unknown keys are ignored (§3.2: "extensions"). A ``*.`` pattern stands for
exactly one leftmost label (§4.1): ``*.example.com`` matches ``mx1.example.com`` but neither
``example.com`` nor ``a.b.example.com``.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import attrs

__all__ = [
    "MAX_AGE_LIMIT",
    "Policy",
    "PolicyError",
    "StsMode",
    "mx_matches",
    "parse_policy",
    "parse_txt",
]

StsMode = Literal["enforce", "testing", "none"]
MODES: Final[tuple[StsMode, ...]] = ("enforce", "testing", "none")

MAX_AGE_LIMIT: Final = 31_557_600  # RFC 8461 §3.2: about one year
_ID: Final = re.compile(r"^[A-Za-z0-9]{1,32}$")  # RFC 8461 §3.1: sts-id = 1*32(ALPHA / DIGIT)
_MX_PATTERN: Final = re.compile(r"^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")


class PolicyError(ValueError):
    """A TXT record or policy file that does not follow RFC 8461; the text says what."""


@attrs.frozen
class Policy:
    """One domain's policy as fetched (RFC 8461 §3.2). ``mx`` holds the patterns, lower case,
    without a final dot."""

    mode: StsMode
    max_age: int
    mx: tuple[str, ...]

    def allows(self, host: str) -> bool:
        """Whether the exchanger ``host`` matches one of the ``mx`` patterns (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def parse_txt(texts: list[str]) -> str | None:
    """The policy id of a domain's ``_mta-sts`` TXT records (each record's strings already
    joined), or None when none of them is an STSv1 record.

    RFC 8461 §3.1: records not starting with ``v=STSv1;`` are ignored; more than one STSv1
    record, or one without a valid ``id``, means the domain has no usable record
    (`PolicyError`).
    """
    found = [text for text in texts if re.match(r"^v=STSv1\s*(;|$)", text)]
    if not found:
        return None
    if len(found) > 1:
        raise PolicyError(f"{len(found)} STSv1 TXT records (RFC 8461 §3.1 allows one)")
    fields: dict[str, str] = {}
    for part in found[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id", "")
    if not _ID.match(policy_id):
        raise PolicyError(
            f"TXT record without a valid id (1 to 32 letters or digits): {found[0]!r}"
        )
    return policy_id


def parse_policy(text: str) -> Policy:
    """The policy file's content (RFC 8461 §3.2); `PolicyError` says what is wrong."""
    version = ""
    mode = ""
    max_age: int | None = None
    patterns: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"line {line[:60]!r} is not 'key: value'")
        key, value = key.strip(), value.strip()
        if key == "version":
            version = value
        elif key == "mode":
            mode = value
        elif key == "max_age":
            if not value.isdigit() or len(value) > 10:
                raise PolicyError(f"max_age {value!r} is not a number of seconds")
            max_age = min(int(value), MAX_AGE_LIMIT)
        elif key == "mx":
            pattern = value.lower().rstrip(".")
            if not _MX_PATTERN.match(pattern):
                raise PolicyError(f"mx {value!r} is not a host name or *.domain pattern")
            patterns.append(pattern)
    if version != "STSv1":
        raise PolicyError(f"version is {version or 'missing'}, not STSv1")
    checked = _mode(mode)
    if max_age is None:
        raise PolicyError("max_age is missing")
    if not patterns and checked != "none":
        raise PolicyError(f"mode {checked} without any mx line")
    return Policy(checked, max_age, tuple(patterns))


def _mode(value: str) -> StsMode:
    for mode in MODES:
        if value == mode:
            return mode
    raise PolicyError(f"mode {value or 'missing'} is not enforce, testing or none")


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: an exact match, or ``*.`` standing for exactly one leftmost label.
    Both sides compared lower case without a final dot."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern
