"""Warnings about a valid configuration: settings that work but expose more than they should.

:func:`config_warnings` returns them as :class:`~dispatch.config.loader.ConfigProblem` lines;
``check-config`` prints them (its exit code stays 0: the file is valid) and the daemon logs
them at start-up. Errors, which stop the daemon, live in :mod:`dispatch.config.loader`.
"""

from __future__ import annotations

import ipaddress

from dispatch.config.loader import ConfigProblem
from dispatch.config.settings import Settings


def _is_loopback_host(host: str) -> bool:
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name may resolve to any address


def config_warnings(settings: Settings) -> list[ConfigProblem]:
    """What in ``settings`` is allowed but probably a mistake; empty when nothing is."""
    problems: list[ConfigProblem] = []
    monitoring = settings.monitoring
    if monitoring.address and not _is_loopback_host(monitoring.address.rpartition(":")[0]):
        admitted = ", ".join(monitoring.allowed_cidrs) or "nobody"
        problems.append(
            ConfigProblem(
                "monitoring.address",
                f"{monitoring.address!r} is not a loopback address: the monitoring server "
                "(plain HTTP; configuration, queue, profiles) can be reached from other hosts, "
                f"kept out only by monitoring.allowed_cidrs ({admitted}). Use "
                "'127.0.0.1:PORT' (and an SSH tunnel) unless that exposure is intended",
            )
        )
    return problems
