"""Value types of the configuration that carry their own validation.

Each type here is a ``NewType`` (or a small class) whose cattrs structure hook lives in
:mod:`dispatch.config.loader`; the hook turns a raw TOML value into the type or raises
``ValueError``/``TypeError`` with a message that says what is wrong and what to write instead.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Final, NewType

Port = NewType("Port", int)
"""A TCP port, 1-65535."""

NonNegativeInt = NewType("NonNegativeInt", int)
PositiveInt = NewType("PositiveInt", int)
PositiveFloat = NewType("PositiveFloat", float)

ProcessCount = NewType("ProcessCount", int)
"""``listener.processes``: a positive integer; ``"auto"`` in the file (:func:`auto_processes`)."""

MAX_AUTO_PROCESSES: Final = 8
"""``"auto"`` never starts more: ``listener.max_connections`` (and the per-address limit) is
shared out among the processes, and on a large machine a share of 1 or 2 sessions per process
would refuse clients while other processes sit idle. Set a number to go beyond it."""


def auto_processes() -> ProcessCount:
    """``"auto"``: one process per core this process may run on (its CPU affinity, so a
    container limited by ``cpuset`` counts its own cores), at most :data:`MAX_AUTO_PROCESSES`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return ProcessCount(max(1, min(cores, MAX_AUTO_PROCESSES)))


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Cidr = NewType("Cidr", str)
"""A network in CIDR notation, kept as written (``"10.0.0.0/8"``), validated on load."""

BindAddresses = NewType("BindAddresses", tuple[str, ...])
"""One IP address or a list of them; a single string in the file becomes a 1-tuple."""

RelayChoice = NewType("RelayChoice", tuple[str, ...])
"""A relay name or a failover list of names (SPEC §6); a single string becomes a 1-tuple."""

HostPort = NewType("HostPort", str)
"""``"host:port"`` or ``"[v6]:port"``, or ``""`` for "off"."""


class Secret:
    """A secret value (password, API key) that never shows itself in ``repr`` or ``str``.

    Use :meth:`reveal` at the one place that needs the plaintext (the relay client's AUTH).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


REDACTED: Final = "<redacted>"

LOOPBACK: Final[tuple[Cidr, ...]] = (Cidr("127.0.0.0/8"), Cidr("::1/128"))
"""The default allow-list of the monitoring server: it shows configuration and internals."""

PRIVATE_AND_LOOPBACK: Final[tuple[Cidr, ...]] = (
    *LOOPBACK,
    Cidr("10.0.0.0/8"),
    Cidr("172.16.0.0/12"),
    Cidr("192.168.0.0/16"),
)
"""The default allow-list of the SMTP listener and the API (SPEC §2): never an open relay."""


def parse_cidrs(cidrs: tuple[Cidr, ...]) -> tuple[IPNetwork, ...]:
    """Parse validated CIDR strings (the loader has already rejected bad ones)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
