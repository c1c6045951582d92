"""Binding the SMTP ports (SPEC §2 ``listener.ports``, ``listener.tls_ports``).

Port 25 needs root and is often taken by a system MTA; rather than fail, Dispatch listens on
2525 instead and says so in the log and in ``/health`` (``configuredPorts`` vs
``listeningPorts``). Any other port that cannot be bound is logged and skipped. Only when no
port at all can be bound does the listener refuse to start.

The implicit-TLS ports (``listener.tls_ports``, RFC 8314) are bound the same way, beside the
others, and reported with them in ``/health``; they never fall back to another port (a
client that expects TLS on 465 must not find it elsewhere, nor plain SMTP there). Which
accepted connection speaks TLS from the first byte is decided by its local port
(:attr:`ListeningPorts.tls`), so the listening sockets can be handed to intake worker
processes as they are.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from typing import Final

import attrs
import trio

log = logging.getLogger("dispatch.smtp")

SMTP_PORT: Final = 25
FALLBACK_PORT: Final = 2525
LISTEN_BACKLOG: Final = 1024  # bursts of connecting senders queue here, not in SYN retries


@attrs.frozen
class ListeningPorts:
    """What ``/health`` reports: the ports asked for and the ports actually listening
    (implicit-TLS ports included in both); ``tls``: the implicit-TLS ports among them."""

    configured: tuple[int, ...]
    listening: tuple[int, ...]
    tls: tuple[int, ...] = ()


class NoPortBound(Exception):
    """Not a single configured SMTP port could be bound."""


async def _bind(address: str, port: int) -> trio.SocketListener:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" must not also claim IPv4, or listing both "0.0.0.0" and "::" would clash.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _bind_all(addresses: Sequence[str], port: int) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = []
    try:
        for address in addresses:
            listeners.append(await _bind(address, port))
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners


async def bind_smtp_ports(
    ports: Sequence[int], addresses: Sequence[str], tls_ports: Sequence[int] = ()
) -> tuple[list[trio.SocketListener], ListeningPorts]:
    """Bind every port on every address; raise :class:`NoPortBound` if none could be."""
    listeners: list[trio.SocketListener] = []
    listening: list[int] = []
    failures: list[str] = []
    for port in ports:
        try:
            bound = await _bind_all(addresses, port)
        except OSError as exc:
            bound = []
            reason = exc.strerror or str(exc)
            fallback_free = FALLBACK_PORT not in (*ports, *tls_ports)
            if port == SMTP_PORT and exc.errno in (errno.EADDRINUSE, errno.EACCES):
                if fallback_free:
                    log.warning("port %d: %s; falling back to %d", port, reason, FALLBACK_PORT)
                    try:
                        bound = await _bind_all(addresses, FALLBACK_PORT)
                        port = FALLBACK_PORT
                    except OSError as fallback_exc:
                        reason = f"{reason}; fallback {FALLBACK_PORT}: {fallback_exc.strerror}"
                else:
                    reason = f"{reason}; no fallback: {FALLBACK_PORT} is configured itself"
            if not bound:
                log.error("port %d cannot be bound (%s); skipped", port, reason)
                failures.append(f"{port} ({reason})")
                continue
        listeners.extend(bound)
        listening.append(port)
        log.info("listening for SMTP on %s port %d", ", ".join(addresses), port)
    tls_listening: list[int] = []
    for port in tls_ports:
        try:
            listeners.extend(await _bind_all(addresses, port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            log.error("implicit-TLS port %d cannot be bound (%s); skipped", port, reason)
            failures.append(f"{port} ({reason})")
            continue
        listening.append(port)
        tls_listening.append(port)
        log.info("listening for SMTP over TLS on %s port %d", ", ".join(addresses), port)
    if not listeners:
        raise NoPortBound(f"no SMTP port could be bound: {', '.join(failures)}")
    configured = (*ports, *tls_ports)
    return listeners, ListeningPorts(configured, tuple(listening), tuple(tls_listening))
