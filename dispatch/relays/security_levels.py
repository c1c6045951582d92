"""The best outbound security level each recipient domain has been seen with, kept on disk.

Theory of operation (as chasquid's ``domaininfo``): a connection to a domain's exchanger is
plaintext, TLS whose certificate did not verify, or TLS verified for the exchanger's name
(:class:`SecurityLevel`, in that order). After a successful check the best level seen is
recorded; a later connection below it fails the check, and the relay defers the delivery
rather than let an attacker on the path strip STARTTLS or present a forged certificate
(a downgrade). A domain that really moved to worse security must be forgotten by hand:
delete its file (docs/delivery.md#security-levels).

Storage: one small JSON file per domain, ``<directory>/<domain>.json``, written to a temporary
file and renamed over the old one (a crash leaves the old or the new record, never half of
one), read once per process and then kept in memory. A domain whose name is not a plain
A-label host name is kept in memory only. Files are read and written in worker threads; an
unreadable or corrupt file is logged and treated as "nothing seen yet" so mail still flows.

Ownership: one :class:`DomainLevels` per process, shared by every ``mx`` relay (the relay set
creates it); nothing to close.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Final

import trio

__all__ = ["DomainLevels", "SecurityLevel", "safe_domain"]

log = logging.getLogger("dispatch.relays.mx")

_SAFE_DOMAIN: Final = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


def safe_domain(domain: str) -> bool:
    """Whether ``domain`` can name a file: lower-case A-labels, no dots at either end."""
    return len(domain) <= 253 and bool(_SAFE_DOMAIN.match(domain))


class SecurityLevel(enum.IntEnum):
    """How a connection to an exchanger was protected; higher is better."""

    PLAIN = 0
    TLS_UNVERIFIED = 1
    TLS_VERIFIED = 2

    @property
    def key(self) -> str:
        """The name in the files and in logs: plain, tls_unverified, tls_verified."""
        return self.name.lower()

    @property
    def text(self) -> str:
        """For people: "plaintext", "TLS with an unverified certificate", "verified TLS"."""
        return _TEXTS[self]

    @classmethod
    def from_key(cls, key: str) -> SecurityLevel:
        return cls[key.upper()]


_TEXTS: Final = {
    SecurityLevel.PLAIN: "plaintext",
    SecurityLevel.TLS_UNVERIFIED: "TLS with an unverified certificate",
    SecurityLevel.TLS_VERIFIED: "verified TLS",
}


class DomainLevels:
    """Best level seen per domain (see the module docstring); ``directory`` None: memory only."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._levels: dict[str, SecurityLevel] = {}

    async def best(self, domain: str) -> SecurityLevel:
        """The best level recorded for ``domain`` (``PLAIN`` when nothing was seen)."""
        level = self._levels.get(domain)
        if level is None:
            level = await trio.to_thread.run_sync(self._read, domain)
            # A concurrent record() may have raised it while the file was read.
            level = max(level, self._levels.get(domain, SecurityLevel.PLAIN))
            self._levels[domain] = level
        return level

    async def record(self, domain: str, level: SecurityLevel) -> None:
        """Remember ``level`` if it is better than what was seen; never lowers it."""
        if level <= await self.best(domain):
            return
        self._levels[domain] = level
        log.info("security level of %s raised to %s", domain, level.text)
        await trio.to_thread.run_sync(self._write, domain, level)

    def _path(self, domain: str) -> Path | None:
        if self.directory is None or not safe_domain(domain):
            return None
        return self.directory / f"{domain}.json"

    def _read(self, domain: str) -> SecurityLevel:
        path = self._path(domain)
        if path is None:
            return SecurityLevel.PLAIN
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return SecurityLevel.from_key(str(data["outgoing_level"]))
        except FileNotFoundError:
            return SecurityLevel.PLAIN
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(
                "cannot read the security level of %s from %s (%s); treating it as not seen "
                "yet: fix or delete the file",
                domain,
                path,
                exc,
            )
            return SecurityLevel.PLAIN

    def _write(self, domain: str, level: SecurityLevel) -> None:
        path = self._path(domain)
        if path is None:
            return
        record = {"domain": domain, "outgoing_level": level.key, "updated_at": int(time.time())}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(record) + "\n", encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            log.error(
                "cannot write the security level of %s to %s (%s); kept in memory until "
                "the process ends: check data_dir's permissions and free space",
                domain,
                path,
                exc,
            )
