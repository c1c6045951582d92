"""Show settings to people, and compare two of them for a SIGHUP reload.

:func:`redacted` is the one way settings leave the process (``check-config``,
``/debug/config``): every :class:`Secret` becomes
``"<redacted>"``, and so does the password inside any URL (``database.url``, a relay's
``base_url``; see :func:`redact_url_credentials`, which error messages naming a URL use too).
:func:`apply_reload` decides what a reload may change without a restart, and
:func:`changed_keys` names what changed (key names only: the audit log records them).
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs
import tomli_w

from dispatch.config.settings import LIVE, Settings
from dispatch.config.types import REDACTED, Secret

_URL: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/?#\s]*)(\S*)")
"""A URL in text: scheme, authority (``user:password@host:port``), and the rest."""

_SECRET_PARAMETER: Final = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|pass|sslpassword|secret|token|access_token|api_key"
    r"|apikey|key)=)([^&;#\s]*)"
)
"""Query parameters that carry a credential (libpq takes ``?password=``, many APIs ``?key=``)."""


def redact_url_credentials(text: str) -> str:
    """``text`` with the password of every URL in it (and credential query parameters) redacted.

    ``postgresql://dispatch:pw@db/mail?sslpassword=x`` becomes
    ``postgresql://dispatch:<redacted>@db/mail?sslpassword=<redacted>``. The user name stays:
    it tells an operator which account is used and is no secret by itself.
    """

    def one(match: re.Match[str]) -> str:
        scheme, authority, rest = match.groups()
        userinfo, at, host = authority.rpartition("@")  # as urllib: the last @ ends userinfo
        user, colon, _password = userinfo.partition(":")
        if at and colon:
            authority = f"{user}:{REDACTED}@{host}"
        return scheme + authority + _SECRET_PARAMETER.sub(lambda m: m.group(1) + REDACTED, rest)

    return _URL.sub(one, text)


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED if value else ""
    if isinstance(value, str):
        return redact_url_credentials(value) if "://" in value else value
    if attrs.has(type(value)):
        return {f.name: _plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as plain data (TOML/JSON-ready) with every secret replaced."""
    data: dict[str, Any] = _plain(settings)
    return data


def redacted_toml(settings: Settings) -> str:
    """The effective configuration as a TOML document that loads back (secrets redacted)."""
    data = redacted(settings)
    # Scalars first: TOML puts top-level keys before any table.
    ordered = dict(sorted(data.items(), key=lambda kv: isinstance(kv[1], dict | list)))
    return tomli_w.dumps(ordered)


def apply_reload(current: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """Merge a reloaded configuration into the running one.

    Returns the settings to run with from now on (live keys from ``new``, every other key
    kept from ``current``) and the dotted paths of changed keys that need a restart.
    """
    needs_restart: list[str] = []

    def merge(old: Any, fresh: Any, path: str) -> Any:
        changes: dict[str, Any] = {}
        for field in attrs.fields(type(old)):
            name = f"{path}.{field.name}" if path else field.name
            before, after = getattr(old, field.name), getattr(fresh, field.name)
            if before == after:
                continue
            if field.metadata.get(LIVE):
                changes[field.name] = after
            elif attrs.has(type(before)) and type(before) is type(after):
                changes[field.name] = merge(before, after, name)
            else:
                needs_restart.append(name)
        return attrs.evolve(old, **changes) if changes else old

    return merge(current, new, ""), needs_restart


def changed_keys(old: Any, new: Any, path: str = "") -> list[str]:
    """The dotted paths of the keys whose values differ between two settings objects.

    Sections are compared key by key; lists of tables of the same length item by item
    (``relays[1].password``); anything else (a list that grew or shrank, a scalar) is named
    by its own path. Only names: no value, secret or not, is ever part of the answer.
    """
    if old == new:
        return []
    if attrs.has(type(old)) and type(old) is type(new):
        changed: list[str] = []
        for field in attrs.fields(type(old)):
            name = f"{path}.{field.name}" if path else field.name
            changed += changed_keys(getattr(old, field.name), getattr(new, field.name), name)
        return changed
    if (
        isinstance(old, tuple)
        and isinstance(new, tuple)
        and len(old) == len(new)
        and all(attrs.has(type(item)) for item in (*old, *new))
    ):
        return [
            key
            for index, (before, after) in enumerate(zip(old, new, strict=True))
            for key in changed_keys(before, after, f"{path}[{index}]")
        ]
    return [path]
