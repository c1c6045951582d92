"""Inbound DKIM verification (RFC 6376 §6), counted: ``listener.dkim_verify = true``.

Theory of operation: while a message streams in, the session keeps a copy of the client's
bytes in a :class:`MessageCopy` (at most :data:`MAX_VERIFY_BYTES`, 2 MiB; a larger message
is not checked, and counts as a verification error). After the ``250`` for the message has been
written — so verification never delays the acceptance of the message it checks —
:func:`verify_received` checks every ``DKIM-Signature`` with dkimpy in a worker thread and
counts chasquid's figures: ``dkimVerifyFound`` / ``dkimVerifyNotFound`` per message,
``dkimVerifyValid`` when one signature passes, ``dkimVerifyErrors`` when a check could not
finish, and ``dkimVerifyResult`` by result per signature (pass, fail, temperror, permerror).

Bounds: the whole check is bounded by ``listener.dkim_verify_timeout_seconds`` (the worker
thread is abandoned when it runs out, and its key lookup ends by its own DNS lifetime, the
same bound); at most :data:`MAX_CONCURRENT` checks run at once per process. The session
reads its client's next command after the check, so a client pipelining many messages on
one connection waits at most that bound per message; the message itself is already safe.

DNS: the key records are asked of ``listener.dkim_verify_nameservers`` on
``dkim_verify_nameserver_port`` (empty: the system resolver), with dnspython, answers cached
per set of servers for their TTL. Results are not written into the message: it is already
spooled as received, never rewritten.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Final

import dkim
import dns.exception
import dns.resolver
import trio
import trio.lowlevel

from dispatch.config.settings import ListenerSettings
from dispatch.monitoring.stats import Stats

__all__ = ["MAX_VERIFY_BYTES", "MessageCopy", "check_signatures", "verify_received"]

log = logging.getLogger("dispatch.dkim")

# dkimpy's relaxed body canonicalisation (what most signers use) runs regular expressions
# over the whole body, each holding the GIL, so the event loop stalls while one runs: about
# 50 ms per expression at this size, measured on a shared 2-core machine. Larger messages
# are not checked.
MAX_VERIFY_BYTES: Final = 2 * 1024 * 1024
MAX_CONCURRENT: Final = 4

_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("dkim_verify")
_CACHES: dict[tuple[tuple[str, ...], int], dns.resolver.Cache] = {}
_CACHES_LOCK = threading.Lock()


class DnsTemporaryError(Exception):
    """A key lookup that may work later: a timeout or a server failure (RFC 6376 §6.1.2)."""


class MessageCopy:
    """The client's bytes of one message, kept for verification up to a bound."""

    def __init__(self, limit: int = MAX_VERIFY_BYTES) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self.size = 0

    @property
    def too_large(self) -> bool:
        return self.size > self._limit

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.too_large:
            self._chunks.clear()  # keep counting the size only
        else:
            self._chunks.append(bytes(data))

    def content(self) -> bytes:
        return b"".join(self._chunks)


def _cache_for(nameservers: tuple[str, ...], port: int) -> dns.resolver.Cache:
    with _CACHES_LOCK:
        cache = _CACHES.get((nameservers, port))
        if cache is None:
            cache = _CACHES[(nameservers, port)] = dns.resolver.Cache()
        return cache


def txt_lookup(settings: ListenerSettings) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc`` on the configured resolver: the first TXT record of a name as
    one string (its character-strings joined, RFC 6376 §3.6.2.2); None when the name has no
    TXT record. Raises `DnsTemporaryError` for a timeout or a server failure. Blocking."""
    nameservers = tuple(settings.dkim_verify_nameservers)
    if nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = list(nameservers)
        resolver.port = settings.dkim_verify_nameserver_port
    else:
        resolver = dns.resolver.Resolver()  # the system's resolv.conf
    resolver.cache = _cache_for(nameservers, settings.dkim_verify_nameserver_port)
    lifetime = settings.dkim_verify_timeout_seconds

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii"), "TXT", lifetime=min(timeout, lifetime))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:
            shown = name.decode("ascii", "replace")
            raise DnsTemporaryError(f"TXT lookup for {shown}: {exc}") from None
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    return lookup


def check_signatures(message: bytes, dnsfunc: Callable[..., bytes | None]) -> list[str]:
    """The result of each ``DKIM-Signature`` of ``message``, top first, as RFC 8601 §2.7.1
    names them: ``pass``, ``fail`` (no key record, a changed header or body), ``temperror``
    (the key could not be looked up now) or ``permerror`` (a malformed signature or key).
    Blocking: call it from a worker thread."""
    # Hand dkimpy the header section and set the body: its own parse of a whole message is
    # one more GIL-holding split of all of it.
    end = message.find(b"\r\n\r\n")
    verifier = dkim.DKIM(message if end < 0 else message[: end + 4])
    if end >= 0:
        verifier.body = message[end + 4 :]
    count = sum(1 for name, _ in verifier.headers if name.strip().lower() == b"dkim-signature")
    results: list[str] = []
    for index in range(count):
        try:
            results.append("pass" if verifier.verify(index, dnsfunc=dnsfunc) else "fail")
        except DnsTemporaryError:
            results.append("temperror")
        except dkim.ValidationError as exc:
            # dkimpy raises for a changed body; the signature is well formed, it failed.
            results.append("fail" if "body hash mismatch" in str(exc) else "permerror")
        except dkim.DKIMException:
            results.append("permerror")
    return results


def _limiter() -> trio.CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(MAX_CONCURRENT)
        _LIMITER.set(limiter)
        return limiter


async def verify_received(
    copy: MessageCopy, settings: ListenerSettings, stats: Stats, message_id: str
) -> None:
    """Check the message's signatures and count them (see the module docstring). Never
    raises for a message: whatever goes wrong is counted and logged."""
    if copy.too_large:
        stats.dkim_verify_errors.add()
        log.info("DKIM: %s not verified: larger than %d bytes", message_id, MAX_VERIFY_BYTES)
        return
    check = functools.partial(check_signatures, copy.content(), txt_lookup(settings))
    results: list[str] | None = None
    with trio.move_on_after(settings.dkim_verify_timeout_seconds):
        try:
            results = await trio.to_thread.run_sync(
                check, abandon_on_cancel=True, limiter=_limiter()
            )
        except Exception as exc:  # noqa: BLE001 - a message dkimpy cannot read at all
            stats.dkim_verify_errors.add()
            log.info("DKIM: %s could not be verified: %s", message_id, exc)
            return
    if results is None:
        stats.dkim_verify_errors.add()
        log.info(
            "DKIM: %s not verified within %g s",
            message_id,
            settings.dkim_verify_timeout_seconds,
        )
        return
    if not results:
        stats.dkim_verify_not_found.add()
        return
    stats.dkim_verify_found.add()
    for result in results:
        stats.dkim_verify_results.add(result)
    if "pass" in results:
        stats.dkim_verify_valid.add()
    if "temperror" in results:
        stats.dkim_verify_errors.add()
    log.info("DKIM: %s signatures: %s", message_id, ", ".join(results))
