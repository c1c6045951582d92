"""Checks across the keys of a structured configuration (``parse_settings`` runs them once
every value has its type): ports that clash, relay names used twice or unknown, an ``ses``
relay's region and credentials, each ``[[webhooks]]`` table, the ``[[dkim]]`` tables, files
that cannot be read, the database URL. Every problem names its key and what to do.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator

from dispatch.config.dkim_checks import dkim_problems
from dispatch.config.node_id import RULE, check_node_id
from dispatch.config.problems import ConfigProblem
from dispatch.config.render import redact_url_credentials
from dispatch.config.settings import SesRelay, Settings, WebhookSettings

_AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")


def _ses_checks(where: str, relay: SesRelay) -> Iterator[ConfigProblem]:
    """An ``ses`` relay's region and credentials: a pair of keys or none (the environment)."""
    if not _AWS_REGION.fullmatch(relay.region):
        yield ConfigProblem(
            f"{where}.region", f"{relay.region!r} is not an AWS region name, e.g. eu-west-1"
        )
    if bool(relay.access_key_id) != bool(relay.secret_access_key):
        yield ConfigProblem(
            f"{where}.access_key_id",
            "set both access_key_id and secret_access_key (or their _env / _file forms), or "
            "neither to use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment",
        )
    elif relay.session_token and not relay.access_key_id:
        yield ConfigProblem(
            f"{where}.session_token",
            "is only used with access_key_id and secret_access_key; set them too, or remove it",
        )


def _webhook_checks(webhooks: tuple[WebhookSettings, ...]) -> Iterator[ConfigProblem]:
    """Each ``[[webhooks]]``: an http(s) URL used once, a secret, at least one event."""
    seen: set[str] = set()
    for i, hook in enumerate(webhooks):
        where = f"webhooks[{i}]"
        parts = urllib.parse.urlsplit(hook.url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            yield ConfigProblem(
                f"{where}.url", f"{hook.url!r} is not an http(s) URL, e.g. 'https://app/hooks'"
            )
        elif hook.url in seen:
            yield ConfigProblem(f"{where}.url", f"{hook.url!r} is used by another webhook")
        seen.add(hook.url)
        if not hook.secret:
            yield ConfigProblem(
                f"{where}.secret",
                "is empty; set secret_env (an environment variable's name) or secret_file "
                "to the key the receiver checks the signature with",
            )
        if not hook.events:
            yield ConfigProblem(
                f"{where}.events",
                "is empty; list at least one of delivered, deferred, failed, "
                "bounced (or remove the webhook)",
            )
        if hook.ca_file and not os.access(hook.ca_file, os.R_OK):
            yield ConfigProblem(
                f"{where}.ca_file", f"cannot read {hook.ca_file}; check the path and permissions"
            )
        if hook.retry_max_seconds < hook.retry_first_seconds:
            yield ConfigProblem(
                f"{where}.retry_max_seconds", "is below retry_first_seconds; raise it"
            )


def cross_checks(settings: Settings) -> Iterator[ConfigProblem]:
    """Every problem a structured :class:`Settings` has across its keys (none: usable)."""
    listener = settings.listener
    for where, message in dkim_problems(settings.dkim):
        yield ConfigProblem(where, message)
    if not listener.ports:
        yield ConfigProblem("listener.ports", "is empty; list at least one SMTP port")
    for port in sorted(set(listener.tls_ports) & set(listener.ports)):
        yield ConfigProblem(
            "listener.tls_ports",
            f"{port} is also in listener.ports; a port speaks either implicit TLS or plain SMTP",
        )
    for port in sorted(set(listener.submission_ports) - {*listener.ports, *listener.tls_ports}):
        yield ConfigProblem(
            "listener.submission_ports",
            f"{port} is in neither listener.ports nor listener.tls_ports; add it to one of them",
        )
    names: list[str] = []
    for i, relay in enumerate(settings.relays):
        if not relay.name:
            yield ConfigProblem(f"relays[{i}].name", "is empty; give every relay a name")
        elif relay.name in names:
            yield ConfigProblem(f"relays[{i}].name", f"{relay.name!r} is used by another relay")
        names.append(relay.name)
    for i, relay in enumerate(settings.relays):
        if isinstance(relay, SesRelay):
            yield from _ses_checks(f"relays[{i}]", relay)
    yield from _webhook_checks(settings.webhooks)
    known = ", ".join(names) or "(none)"
    if not settings.relays:
        yield ConfigProblem("relays", "is empty; configure at least one relay")
    elif settings.default_relay and settings.default_relay not in names:
        yield ConfigProblem(
            "default_relay", f"{settings.default_relay!r} is not a configured relay ({known})"
        )
    elif not settings.default_relay and len(settings.relays) > 1:
        yield ConfigProblem("default_relay", f"is not set; name one of the relays ({known})")
    for i, route in enumerate(settings.routes):
        for name in route.relay:
            if name not in names:
                yield ConfigProblem(
                    f"routes[{i}].relay", f"{name!r} is not a configured relay ({known})"
                )
    for i, user in enumerate(listener.users):
        if not user.password_hash.reveal().startswith("$argon2"):
            yield ConfigProblem(
                f"listener.users[{i}].password_hash",
                "is not an argon2 hash; make one with `python -m dispatch hash-password`",
            )
    if bool(settings.tls.cert_file) != bool(settings.tls.key_file):
        yield ConfigProblem("tls", "set both cert_file and key_file, or neither")
    for key in ("cert_file", "key_file"):
        path = getattr(settings.tls, key)
        if path and not os.access(path, os.R_OK):
            yield ConfigProblem(f"tls.{key}", f"cannot read {path}; check the path and permissions")
    if not settings.spool.retry_delays_seconds:
        yield ConfigProblem("spool.retry_delays_seconds", "is empty; give at least one delay")
    url = settings.database.url
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        yield ConfigProblem(
            "database.url",
            f"{redact_url_credentials(repr(url))} is not a database URL; use 'sqlite:///PATH' "
            "or 'postgresql://…'",
        )
    if settings.database.node_id:
        try:
            check_node_id(settings.database.node_id)
        except ValueError:
            yield ConfigProblem("database.node_id", f"{settings.database.node_id!r}: {RULE}")
    if settings.health.disk_critical_bytes > settings.health.disk_warning_bytes:
        yield ConfigProblem(
            "health.disk_critical_bytes", "is above health.disk_warning_bytes; lower it"
        )
