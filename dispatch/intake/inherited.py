"""SMTP listeners on sockets systemd opened (socket activation), instead of binding ports.

With a socket unit (``contrib/dispatch-smtp.socket``), the service manager owns the SMTP
ports and passes their listening sockets to Dispatch (:mod:`dispatch.systemd.activation`):
port 25 binds without any privilege in the daemon, and connections made while Dispatch
restarts wait in the socket's backlog instead of being refused. ``listener.bind_address`` is
not used then, and nothing falls back to 2525.

Every inherited socket is an SMTP listener. Which one speaks TLS from the first byte
(RFC 8314) is decided as for bound ports, by the local port: a socket whose port is in
``listener.tls_ports`` is an implicit-TLS listener, any other a plain one (STARTTLS offered).
The descriptor names (``FileDescriptorName=``) are only logged. ``listener.ports`` and
``listener.tls_ports`` should name the ports the socket unit listens on: ``/health``
compares them, and reports ``degraded`` while they disagree (a warning says so at start).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import trio

from dispatch.intake.ports import ListeningPorts
from dispatch.systemd.activation import ActivationError, InheritedSocket

log = logging.getLogger("dispatch.smtp")


def _check(inherited: InheritedSocket, sock: socket.socket) -> tuple[str, int]:
    """The address and port ``sock`` listens on; :class:`ActivationError` if it is not a
    listening TCP socket an SMTP listener can serve."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        raise ActivationError(
            f"{inherited} is not a TCP socket ({sock.family.name}, {sock.type.name}); "
            "use ListenStream=ADDRESS:PORT in the socket unit"
        )
    address, port = sock.getsockname()[:2]
    dual_stack = sock.family == socket.AF_INET6 and address == "::"
    if dual_stack and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
        # IPv4 peers would arrive as ::ffff:a.b.c.d and match no IPv4 entry of
        # listener.allowed_cidrs: refuse rather than turn every IPv4 client away.
        raise ActivationError(
            f"{inherited} listens on [::]:{port} for IPv4 too; set BindIPv6Only=ipv6-only "
            f"in the socket unit and add ListenStream=0.0.0.0:{port} for IPv4"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ActivationError(f"{inherited} is not listening; use ListenStream= in the socket unit")
    return str(address), int(port)


def inherited_smtp_listeners(
    sockets: Sequence[InheritedSocket], ports: Sequence[int], tls_ports: Sequence[int]
) -> tuple[list[trio.SocketListener], ListeningPorts]:
    """Listeners on duplicates of ``sockets`` (the caller closes them; the inherited
    descriptors stay open for the next start) and what ``/health`` reports about them.
    Raises :class:`ActivationError` naming the descriptor that cannot serve SMTP."""
    listeners: list[trio.SocketListener] = []
    listening: list[int] = []
    try:
        for inherited in sockets:
            sock = inherited.duplicate()
            try:
                address, port = _check(inherited, sock)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            kind = "SMTP over TLS" if port in tls_ports else "SMTP"
            log.info(
                "listening for %s on %s port %d: %s inherited from systemd",
                kind,
                address,
                port,
                inherited,
            )
            if port not in listening:
                listening.append(port)
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    configured = (*ports, *tls_ports)
    if sorted(listening) != sorted(set(configured)):
        log.warning(
            "socket activation: the inherited sockets listen on port(s) %s but listener.ports "
            "and listener.tls_ports name %s; /health reports degraded until they agree",
            ", ".join(map(str, listening)),
            ", ".join(map(str, configured)) or "none",
        )
    tls = tuple(port for port in listening if port in tls_ports)
    return listeners, ListeningPorts(configured, tuple(listening), tls)
