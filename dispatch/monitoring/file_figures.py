"""Figures ``/metrics`` reads from the file system: the spool's free disk and the TLS
certificate's expiry, kept in memory so that a scrape never touches a disk.

Theory of operation
-------------------
:class:`FileFigures` holds the last values read. :meth:`FileFigures.refresh_forever`, run by
the daemon's "figures" component next to the database figures, reads them every
:data:`REFRESH_INTERVAL` seconds in worker threads, each read under
:data:`READ_TIMEOUT` with its own one-thread limiter: a spool on a file system that stopped
answering (a hung NFS server) leaves its thread behind and the last figures in place, and
never holds up the event loop, the database figures or ``/health``'s own probes.

A certificate file is parsed again only when its size, modification time or inode changed,
so renewing it in place (certbot's deploy hook copies new files) shows at the next refresh;
the listeners load the certificate when they start, which is why docs/deploy.md restarts
Dispatch after a renewal.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import attrs
import trio

from dispatch.security.certs import not_valid_after

log = logging.getLogger("dispatch.monitoring")

REFRESH_INTERVAL: Final = 15.0
"""Seconds between reads: about one scrape interval. Free space changes slowly next to it,
and a certificate is read again only when its file changed."""

UNTIL_MADE_INTERVAL: Final = 1.0
"""Seconds between reads while a certificate file does not exist yet: the self-signed one is
made by the first listener to start, a moment after this task starts."""

READ_TIMEOUT: Final = 5.0
"""Longer than any healthy ``statvfs`` or small file read; a file system slower than this is
reported by ``/health`` (its disk check), not waited for here."""

type FileIdentity = tuple[int, int, int]  # inode, size, modification time in ns


@attrs.frozen
class CertificateExpiry:
    """A certificate file as last read: when it expires, and which version of the file."""

    not_after: float  # Unix time
    identity: FileIdentity


class FileFigures:
    """The last free-disk and certificate-expiry figures; read by the metrics collector.

    Owns two one-thread limiters (disk, certificates). Values are ``None`` (disk) or absent
    (certificates) until first read; a failed read keeps the previous value and is logged
    once per change of error.
    """

    def __init__(self, spool_directory: Path, certificates: Callable[[], Sequence[Path]]) -> None:
        """``certificates`` names the certificate files the listeners serve (asked at each
        refresh: the self-signed one appears after the first start made it)."""
        self.spool_directory = spool_directory
        self._certificate_paths = certificates
        self.disk_free_bytes: int | None = None
        self.disk_total_bytes: int | None = None
        self.certificates: dict[str, CertificateExpiry] = {}
        self._disk_limiter = trio.CapacityLimiter(1)
        self._cert_limiter = trio.CapacityLimiter(1)
        self._last_error: dict[str, str] = {}
        self._unread = False  # a certificate file has not been read yet (not made yet)

    def certificate_expiries(self) -> dict[str, float]:
        """``{certificate file: Unix time it expires}`` for the files read so far."""
        return {path: entry.not_after for path, entry in sorted(self.certificates.items())}

    async def refresh(self) -> None:
        """Read the disk figures and every certificate file whose identity changed."""
        self._unread = False
        usage = await self._read(
            "disk", self._disk_limiter, shutil.disk_usage, self.spool_directory
        )
        if usage is not None:
            self.disk_free_bytes, self.disk_total_bytes = usage.free, usage.total
        for path in self._certificate_paths():
            known = self.certificates.get(str(path))
            entry = await self._read(
                f"certificate {path}", self._cert_limiter, _read_certificate, path, known
            )
            if entry is not None:
                self.certificates[str(path)] = entry
            elif known is None:
                self._unread = True

    async def refresh_forever(self, interval: float = REFRESH_INTERVAL) -> None:
        """Refresh now and then every ``interval`` seconds until cancelled (every
        :data:`UNTIL_MADE_INTERVAL` while a certificate file has not been read yet)."""
        while True:
            await self.refresh()
            await trio.sleep(min(interval, UNTIL_MADE_INTERVAL) if self._unread else interval)

    async def _read[**P, T](
        self,
        what: str,
        limiter: trio.CapacityLimiter,
        read: Callable[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T | None:
        result: T | None = None
        error = ""
        with trio.move_on_after(READ_TIMEOUT) as scope:
            try:
                result = await trio.to_thread.run_sync(
                    lambda: read(*args, **kwargs), limiter=limiter, abandon_on_cancel=True
                )
            except (OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            error = f"no answer within {READ_TIMEOUT:g} s"
        if error and self._last_error.get(what) != error:
            log.warning("metrics: cannot read %s: %s; keeping the last figure", what, error)
        self._last_error[what] = error
        return result


def _identity(path: Path) -> FileIdentity:
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns


def _read_certificate(path: Path, known: CertificateExpiry | None) -> CertificateExpiry | None:
    """The certificate's expiry; the known one when the file did not change (no parse);
    None for a file never read that does not exist yet (not an error: not made yet)."""
    if known is None and not path.exists():
        return None
    identity = _identity(path)
    if known is not None and known.identity == identity:
        return known
    return CertificateExpiry(not_valid_after(path), identity)
