"""The SMTP listener component: accepting connections and running a session for each.

Serves listening sockets its caller bound with :func:`~dispatch.intake.ports.bind_smtp_ports`
(the daemon, which may hand the same sockets to intake worker processes too) and keeps the
configured vs listening ports for ``/health``. Owns the nursery of sessions and the count of
open sessions; ready (``task_status.started()``) at once. At connect it applies the live
``listener.allowed_cidrs`` (``554``, logged with the IP, counted as denied),
``listener.max_connections`` (``421``) and ``listener.max_connections_per_ip`` (``421 4.7.0``:
one address cannot take every slot). With ``listener.processes`` > 1 each process enforces
its share of both limits (rounded up), as it only sees the sessions it accepted itself.

On an implicit-TLS port (``listener.tls_ports``, RFC 8314) the connection is wrapped in TLS
with the STARTTLS certificate before the session starts, under the STARTTLS handshake
deadline; a failed handshake is logged at info and the connection closed. Refusals at
connect on such a port close without a reply (the client is waiting for a TLS handshake and
could not read a plaintext one); they are counted all the same. Each session is told its
local port, which decides its policy (``listener.submission_ports``, ``tls_ports``).

Stopping (``shutdown.requested``): the sockets close at once so no new session starts; each
open session is cancelled, which discards a message still being received, and then told
``421``. A session in the middle of committing a message finishes that first (the commit and
its ``250`` are shielded). The supervisor's grace period bounds the whole drain.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import socket
import sys
from collections import Counter
from typing import Final

import trio

from dispatch.intake import records
from dispatch.intake.balance import OpenCounts
from dispatch.intake.ports import ListeningPorts
from dispatch.intake.session import IntakeContext, SmtpSession
from dispatch.intake.transport import HandshakeFailed, tls_handshake
from dispatch.lifecycle import Shutdown
from dispatch.logs import log_context
from dispatch.monitoring.traces import Trace
from dispatch.security.allowlist import is_allowed
from dispatch.smtp import replies

log = logging.getLogger("dispatch.smtp")

# accept() errors that mean "out of resources right now", not "the socket is broken";
# trio.serve_listeners treats them the same way: wait a little and accept again.
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# accept() errors about one connection that died in the queue (accept(2), "Error handling":
# Linux passes pending network errors on): skip it and accept the next, as trio's
# SocketListener.accept does.
_SKIPPED_ERRNOS: Final = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPERM,
        errno.EPROTO,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
    }
)
ACCEPT_BATCH: Final = 64  # connections accepted per wake-up before the accepting task yields
# How long a worker that holds its share leaves waiting connections to the other workers
# before it takes one anyway (they may be busy, or gone).
DEFER_SECONDS: Final = 0.002
_TCP_INFO_BYTES: Final = 32  # struct tcp_info up to tcpi_sacked
RESOURCE_BACKOFF_SECONDS: Final = 0.1
REFUSAL_SECONDS: Final = 2.0  # time given to write a 554/421 to a refused peer
TOO_MANY_FROM_IP: Final = replies.Reply.of(
    421, "Too many connections from your address, try later", enhanced="4.7.0"
)


class SmtpListener:
    """See the module docstring. ``ports``: what :func:`bind_smtp_ports` bound.

    An intake worker passes ``counts``, the connections every worker holds
    (``intake/balance.py``): it then accepts only up to its share of them.
    """

    def __init__(
        self,
        context: IntakeContext,
        ports: ListeningPorts,
        *,
        processes: int = 1,
        counts: OpenCounts | None = None,
    ) -> None:
        self.context = context
        self.ports = ports
        self.processes = processes  # max_connections is shared out among the processes
        self.counts = counts
        self.connections = 0  # accepted and not closed yet (counts.hold)
        self.open_sessions = 0
        self.sessions_by_ip: Counter[str] = Counter()  # only addresses with open sessions
        self._session_scopes: set[trio.CancelScope] = set()

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        shutdown: Shutdown,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on ``listeners`` (bound already) until ``shutdown``; then drain and close."""
        task_status.started()
        async with trio.open_nursery() as sessions:
            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept, listener, sessions)
                    await shutdown.requested.wait()
                    accepting.cancel_scope.cancel()
            finally:
                for listener in listeners:
                    await listener.aclose()
            log.info("stopped accepting; closing %d open session(s)", self.open_sessions)
            for scope in self._session_scopes:
                scope.cancel()

    async def _accept(self, listener: trio.SocketListener, sessions: trio.Nursery) -> None:
        """Accept a batch of connections (:meth:`_batch`) each time ``listener`` is readable;
        an intake worker that holds its share already waits :data:`DEFER_SECONDS` first, then
        takes one.

        Owns a duplicate of the listening descriptor, closed when this task ends (it is
        cancelled at shutdown, before the listener itself closes). Accepting what waits in one
        go, rather than one ``trio.SocketListener.accept`` and a yield per wake-up, is what
        makes a new connection cheaper (docs/intake-cpu.md, round 9); the peer's address
        comes with the connection, the local port is the listener's.
        """
        raw = socket.socket(fileno=os.dup(listener.socket.fileno()))
        try:
            raw.setblocking(False)
            local_port = int(raw.getsockname()[1])  # the port decides the session's policy
            while True:
                await trio.lowlevel.wait_readable(raw)
                batch = self._batch(raw)
                if not batch:
                    # This worker holds its share: the others may take what waits. Give
                    # them a moment, then take one anyway (they may be busy, or gone).
                    await trio.sleep(DEFER_SECONDS)
                    batch = max(1, self._batch(raw))
                for _ in range(batch):
                    try:
                        sock, address = raw.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _SKIPPED_ERRNOS:
                            continue
                        if exc.errno not in _RESOURCE_ERRNOS:
                            raise
                        log.error("accept failed (%s); retrying", exc.strerror)
                        await trio.sleep(RESOURCE_BACKOFF_SECONDS)
                        break
                    self._hold(1)
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                    sessions.start_soon(self._connection, stream, str(address[0]), local_port)
        finally:
            trio.lowlevel.notify_closing(raw)  # out of trio's epoll set before the close
            raw.close()

    def _batch(self, raw: socket.socket) -> int:
        """How many connections to accept at this wake-up before yielding: alone on the
        socket, all that wait (at most :data:`ACCEPT_BATCH`); as one of the intake workers
        sharing it (every one of them woken), what this worker lacks of its share of all
        the connections the workers hold and those waiting — none when it holds its share,
        so that clients that connect to stay spread evenly over the workers. The queue's
        length is the listening socket's ``tcpi_unacked`` (Linux: ``tcp_get_info`` in
        ``net/ipv4/tcp.c``).
        """
        if self.counts is None:
            return ACCEPT_BATCH
        try:
            info = raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
        except OSError:
            return 1
        waiting = int.from_bytes(info[24:28], sys.byteorder)  # tcpi_unacked: the accept queue
        return max(0, min(ACCEPT_BATCH, self.counts.fair_share(waiting) - self.connections))

    def _hold(self, change: int) -> None:
        self.connections += change
        if self.counts is not None:
            self.counts.hold(self.connections)

    async def _connection(self, stream: trio.SocketStream, peer_ip: str, local_port: int) -> None:
        """Owns ``stream`` until it is closed; never lets an exception escape to the nursery."""
        with log_context(session=secrets.token_hex(4), peer=peer_ip):
            try:
                await self._serve(stream, peer_ip, local_port)
            except Exception:
                log.exception("session failed")
            finally:
                # Closed at once: trio's aclose_forcefully would cancel its own checkpoint,
                # raising and catching a Cancelled per connection for a close that never
                # waits (trio's socket close tells any waiter on the descriptor itself).
                stream.socket.close()
                self._hold(-1)

    def _share(self, count: int) -> int:
        """This process's share of a limit of ``count`` connections, rounded up."""
        return -(-count // self.processes)

    async def _refuse(
        self, stream: trio.SocketStream, reason: str, reply: replies.Reply, *, tls: bool
    ) -> None:
        self.context.stats.smtp_denied.add(reason)
        if tls:
            return  # a client that starts with a TLS handshake cannot read a plaintext reply
        self.context.stats.smtp_replies.add(str(reply.code))
        with trio.move_on_after(REFUSAL_SECONDS):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(reply.serialise())

    async def _serve(self, stream: trio.SocketStream, peer_ip: str, local_port: int) -> None:
        settings = self.context.settings()
        tls = local_port in settings.tls_ports  # not live: always the ports that were bound
        if not is_allowed(peer_ip, settings.allowed_cidrs):
            log.warning("denied connection from %s: not in listener.allowed_cidrs", peer_ip)
            self.context.record(records.denied("smtp", peer_ip, "listener.allowed_cidrs"))
            await self._refuse(stream, "allowlist", replies.ACCESS_DENIED, tls=tls)
            return
        if self.open_sessions >= self._share(settings.max_connections):
            log.warning("refused connection from %s: max_connections reached", peer_ip)
            await self._refuse(stream, "max_connections", replies.TOO_MANY_CONNECTIONS, tls=tls)
            return
        per_ip = self._share(min(settings.max_connections_per_ip, settings.max_connections))
        if self.sessions_by_ip[peer_ip] >= per_ip:
            log.warning("refused connection from %s: max_connections_per_ip reached", peer_ip)
            await self._refuse(stream, "max_connections_per_ip", TOO_MANY_FROM_IP, tls=tls)
            return
        trace = self.context.tracer.start("smtp.session", f"{peer_ip} → port {local_port}")
        if trace.recording:  # not in an intake worker (monitoring/untraced.py)
            kind = "implicit TLS" if tls else "plain"
            trace.event(f"connection from {peer_ip} to port {local_port} ({kind})")
        self.open_sessions += 1
        self.sessions_by_ip[peer_ip] += 1
        scope = trio.CancelScope()
        self._session_scopes.add(scope)
        transport: trio.abc.Stream = stream
        session: SmtpSession | None = None
        try:
            log.debug("connected")
            with scope:
                if tls:
                    transport = await self._implicit_tls(stream, peer_ip, trace)
                session = SmtpSession(
                    transport, peer_ip, self.context, trace, local_port=local_port, implicit_tls=tls
                )
                await session.run()
            if scope.cancelled_caught and session is not None:
                trace.event("shutting down")
                await session.say_goodbye(replies.SHUTTING_DOWN)
        except _HandshakeFailed:
            pass  # already traced
        finally:
            if trace.recording:
                trace.event(f"closed after {session.messages if session else 0} message(s)")
            trace.finish()
            self._session_scopes.discard(scope)
            self.open_sessions -= 1
            self.sessions_by_ip[peer_ip] -= 1
            if not self.sessions_by_ip[peer_ip]:
                del self.sessions_by_ip[peer_ip]  # memory only for addresses connected now
            if session is not None:
                transport = session.stream
            if transport is not stream:  # a TLS layer (implicit or STARTTLS): close it too
                await trio.aclose_forcefully(transport)
            log.debug("closed after %d message(s)", session.messages if session else 0)

    async def _implicit_tls(
        self, stream: trio.SocketStream, peer_ip: str, trace: Trace
    ) -> trio.SSLStream[trio.abc.Stream]:
        """RFC 8314 §3.3: the TLS handshake first, under the same deadline as STARTTLS's.

        A client that fails it (or never starts it) is logged at info and dropped: a port
        scanner or a plaintext client on 465 is routine, not an error of Dispatch's."""
        if self.context.tls is None:
            log.error("no TLS context for the implicit-TLS port; closing")
            trace.error("no TLS context for the implicit-TLS port; closed")
            raise _HandshakeFailed
        try:
            return await tls_handshake(stream, self.context.tls, trace)
        except HandshakeFailed as exc:
            log.info("implicit TLS handshake with %s failed: %s", peer_ip, exc)
            await trio.aclose_forcefully(stream)
            raise _HandshakeFailed from exc


class _HandshakeFailed(Exception):
    """The implicit-TLS handshake did not complete; the connection is closed, nothing said."""
