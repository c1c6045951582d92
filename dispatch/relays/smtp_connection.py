"""One outbound SMTP connection, up to the mail transaction: the I/O around the sans-IO
:class:`ClientConnection` for opening, talking and closing.

Theory of operation: :meth:`SmtpConnection.connect` opens a TCP connection (TLS from the first
byte for ``implicit``), reads the greeting, says EHLO (HELO if EHLO is refused), upgrades with
STARTTLS as the :data:`TlsMode` asks and authenticates when a username is configured. Every
command goes through :meth:`~SmtpConnection._command`; every wait has its own deadline
(:class:`Timeouts`), and :meth:`~SmtpConnection._write` and :meth:`~SmtpConnection._read` turn
a timeout or a broken stream into :class:`SessionError` (:meth:`~SmtpConnection._failed`).
Plain TCP is read and written through its descriptor (``dispatch/fd_io.py``), TLS through
trio's stream. The mail transaction itself is ``smtp_session.py``'s
:class:`~dispatch.relays.smtp_session.SmtpClientSession`, built on this.

Failures: a refused connection, a TLS failure, a timeout, a broken stream, a reply that
breaks the dialogue (``RemoteProtocolError``, a reply of a class that makes no sense for its
command, an unsolicited reply) all make the connection unusable (``usable`` becomes False): it
is closed without QUIT and never reused. While connecting they raise :class:`SessionError`
(``timed_out`` set when a wait ran out of time).

Ownership and stopping: the connection owns its stream (TCP, possibly wrapped in TLS).
:meth:`aclose` sends QUIT (bounded, best effort) and closes the stream; :meth:`abort` closes it
at once. A cancelled :meth:`connect` closes its half-open connection itself. Reuse is the
pool's business (`dispatch.relays.smtp_pool`).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Final, Literal, Self

import trio

from dispatch import fd_io
from dispatch.monitoring.dialogue import TlsFacts, command_line, reply_lines
from dispatch.monitoring.traces import Trace
from dispatch.relays.smtp_options import SessionError, SessionOptions, why_not_connected
from dispatch.smtp import NEED_DATA, ClientConnection, Extensions, Reply
from dispatch.smtp import auth as sasl
from dispatch.smtp.errors import RemoteProtocolError, UnexpectedReply
from dispatch.smtp.events import (
    Auth,
    AuthResponse,
    Command,
    ConnectionClosed,
    Ehlo,
    Helo,
    Quit,
    StartTls,
)

__all__ = ["SmtpConnection"]

RECEIVE_BYTES: Final = 65_536
# QUIT is a courtesy (RFC 5321 §4.1.1.10): a server that does not answer quickly is not waited
# for, so closing a pool never takes long.
QUIT_SECONDS: Final = 5.0
# What an I/O wait can end in besides its result; :meth:`SmtpConnection._failed` makes each a
# `SessionError`.
_IO_FAILURES: Final = (
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    UnexpectedReply,
    RemoteProtocolError,
)


class SmtpConnection:
    """One outbound SMTP connection (see the module docstring for ownership and failures).

    Build it with :meth:`connect`. ``usable`` is False once anything went wrong; ``tls_active``
    says whether the connection is encrypted (``transport`` gives "tls" or "plain" for stats).
    ``trace``, when set, gets the dialogue (AUTH redacted) and the TLS facts: whoever leases
    the session sets it for one delivery and clears it when giving the session back.
    """

    def __init__(self, options: SessionOptions, trace: Trace | None = None) -> None:
        self.options = options
        self.trace = trace
        self.timeouts = options.timeouts
        self.usable = True
        self.tls_active = False
        self.tls_verified = False  # the certificate was verified for tls_server_name
        self.transactions = 0
        self.replies = 0  # replies read to our commands (unsolicited 421s not counted)
        self._conn = ClientConnection(options.limits)
        self._stream: trio.abc.Stream | None = None
        self._fd: int | None = None  # plain TCP: read and written through it (fd_io.py)
        self._closing_reply: Reply | None = None  # a 421 the server sent before closing

    @property
    def extensions(self) -> Extensions:
        """What the server offers (nothing after HELO)."""
        return self._conn.extensions or Extensions()

    @property
    def transport(self) -> Literal["tls", "plain"]:
        return "tls" if self.tls_active else "plain"

    # --- setting up ------------------------------------------------------------------------

    @classmethod
    async def connect(cls, options: SessionOptions, trace: Trace | None = None) -> Self:
        """Connect, greet, STARTTLS and AUTH as configured; raise `SessionError` on failure
        (the connection is then already closed). Cancellation closes the connection too."""
        session = cls(options, trace)
        try:
            await session._open()
        except BaseException:
            await session.abort()
            raise
        return session

    async def _open(self) -> None:
        options = self.options
        await self._connect_tcp()
        if options.tls == "implicit":
            await self._handshake()
        greeting = await self._read(self.timeouts.greeting, "waiting for the greeting")
        if greeting.code != 220:
            raise self._broken(f"{options.display} greeted with {greeting}")
        await self._hello()
        if options.tls in ("opportunistic", "required") and not self.tls_active:
            await self._starttls()
        if not self.tls_active:
            self._count_tls("plain")
        if options.username:
            await self._authenticate()

    async def _connect_tcp(self) -> None:
        options = self.options
        self._note(f"connecting to {options.display}")
        try:
            with trio.fail_after(self.timeouts.connect):
                self._stream = await trio.open_tcp_stream(options.address, options.port)
                self._fd = fd_io.plain_fd(self._stream)
        except trio.TooSlowError:
            raise self._broken(
                f"connection to {options.display} timed out after {self.timeouts.connect:g} s",
                timed_out=True,
            ) from None
        except OSError as exc:
            why, timed_out = why_not_connected(exc)
            detail = f"connection to {options.display} {why}"
            raise self._broken(detail, timed_out=timed_out) from None

    async def _hello(self) -> None:
        """EHLO; a 5xx means a pre-ESMTP server, which gets HELO (RFC 5321 §4.1.1.1)."""
        helo_name = self.options.helo_name
        reply = await self._command(Ehlo(helo_name), self.timeouts.command, "EHLO")
        if reply.is_permanent:
            reply = await self._command(Helo(helo_name), self.timeouts.command, "HELO")
        if not reply.is_positive:
            raise self._broken(f"{self.options.display} refused EHLO/HELO: {reply}")

    async def _starttls(self) -> None:
        """RFC 3207. ``required`` fails (transiently: the server may be fixed) when the server
        does not offer or refuses it; ``opportunistic`` then goes on in plaintext (§4)."""
        required = self.options.tls == "required"
        if not self.extensions.starttls:
            if required:
                raise self._broken(
                    f"{self.options.display} does not offer STARTTLS", tls_failure=True
                )
            return
        reply = await self._command(StartTls(), self.timeouts.command, "STARTTLS")
        if reply.code != 220:
            if required:
                raise self._broken(
                    f"{self.options.display} refused STARTTLS: {reply}", tls_failure=True
                )
            return
        await self._handshake()
        self._conn.tls_established()  # forget the plaintext EHLO reply (RFC 3207 §4.2)
        await self._hello()

    async def _handshake(self) -> None:
        options = self.options
        assert self._stream is not None
        if options.ssl_context is None:
            raise self._broken("TLS is required but no TLS context is configured")
        tls_stream = trio.SSLStream(
            self._stream,
            options.ssl_context,
            server_hostname=options.tls_server_name,
            https_compatible=True,  # a server that drops the TCP connection after 221 is fine
        )
        self._stream, self._fd = tls_stream, None
        try:
            with trio.fail_after(self.timeouts.command):
                await tls_stream.do_handshake()
        except trio.TooSlowError:
            raise self._broken(
                f"TLS handshake with {options.display} timed out after {self.timeouts.command:g} s",
                tls_failure=True,
                timed_out=True,
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__
            verify_failure = isinstance(cause, ssl.SSLCertVerificationError)
            if isinstance(cause, ssl.SSLCertVerificationError):
                detail = (
                    f"TLS certificate of {options.display} failed verification: "
                    f"{cause.verify_message or cause}"
                )
            else:
                detail = f"TLS handshake with {options.display} failed: {cause or exc}"
            # chasquid counts a certificate that does not verify as insecure TLS, not failed.
            self._count_tls("tls:insecure" if verify_failure else "tls:failed")
            raise self._broken(detail, tls_failure=True, verify_failure=verify_failure) from None
        self.tls_active = True
        self.tls_verified = (
            options.ssl_context.verify_mode != ssl.CERT_NONE and options.ssl_context.check_hostname
        )
        self._count_tls("tls:secure" if self.tls_verified else "tls:insecure")
        if self.trace is not None:
            verified = options.ssl_context.verify_mode != ssl.CERT_NONE
            facts = TlsFacts.of(tls_stream, options.tls_server_name, verified=verified)
            self.trace.event(facts.text())

    async def _authenticate(self) -> None:
        """AUTH PLAIN (RFC 4616), else LOGIN, and only over TLS unless told otherwise."""
        options = self.options
        if not self.tls_active and not options.auth_without_tls:
            # Permanent: retrying will not make the connection encrypted; the operator must
            # enable TLS on the server or set tls = "none" explicitly.
            self.usable = False
            self._note("refusing AUTH without TLS", error=True)
            raise SessionError("permanent", options.label, "refusing AUTH without TLS")
        mechanisms = self.extensions.auth
        timeout = self.timeouts.command
        if "PLAIN" in mechanisms:
            response = sasl.plain_response(options.username, options.password)
            reply = await self._command(Auth("PLAIN", response), timeout, "AUTH")
            if reply.code == 334:  # a server that ignored the initial response
                reply = await self._command(AuthResponse(response), timeout, "AUTH")
        elif "LOGIN" in mechanisms:
            reply = await self._command(Auth("LOGIN"), timeout, "AUTH")
            for secret in (options.username, options.password):
                if reply.code != 334:
                    break
                line = AuthResponse(sasl.login_response(secret))
                reply = await self._command(line, timeout, "AUTH")
        else:
            offered = " ".join(sorted(mechanisms)) or "none"
            raise self._broken(
                f"{options.display} offers no AUTH mechanism Dispatch supports "
                f"(PLAIN, LOGIN; offered: {offered})"
            )
        if reply.code != 235:
            # Transient: credentials are fixed in the configuration, then the retry works.
            raise self._broken(
                f"authentication as {options.username!r} at {options.display} failed: {reply}"
            )

    # --- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """QUIT if the session is still in step (bounded by ``QUIT_SECONDS``), then close the
        stream. Idempotent. Cancellation still closes the stream (forcefully)."""
        if self._stream is None:
            return
        try:
            if self.usable and not self._conn.closed:
                with trio.move_on_after(min(QUIT_SECONDS, self.timeouts.command)):
                    with contextlib.suppress(SessionError):
                        await self._command(Quit(), QUIT_SECONDS, "QUIT")
        finally:
            self.usable = False
            stream, self._stream, self._fd = self._stream, None, None
            if stream is not None:
                with trio.move_on_after(QUIT_SECONDS):
                    await stream.aclose()

    async def abort(self) -> None:
        """Drop the connection now, without QUIT. Safe to call in a cancelled scope."""
        self.usable = False
        stream, self._stream, self._fd = self._stream, None, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    # --- I/O ---------------------------------------------------------------------------------

    def _broken(self, detail: str, **flags: bool) -> SessionError:
        """The session cannot go on: a transient `SessionError` (``flags``: its
        ``tls_failure`` and ``timed_out``)."""
        self.usable = False
        self._note(detail, error=True)
        return SessionError("transient", self.options.label, detail, **flags)

    def _unexpected(self, reply: Reply, what: str) -> SessionError:
        return self._broken(f"unexpected reply to {what} from {self.options.display}: {reply}")

    def _failed(self, exc: Exception, timeout: float, what: str) -> SessionError:
        """The `SessionError` for how an I/O wait ended (one of :data:`_IO_FAILURES`)."""
        display = self.options.display
        if isinstance(exc, trio.TooSlowError):
            return self._broken(f"timed out after {timeout:g} s {what} ({display})", timed_out=True)
        if isinstance(exc, UnexpectedReply):
            return self._unexpected(exc.reply, exc.command)
        if isinstance(exc, RemoteProtocolError):
            return self._broken(f"protocol error from {display} {what}: {exc}")
        cause = exc.__cause__ or exc  # the stream broke or was closed
        return self._broken(f"connection to {display} lost {what}: {cause}")

    async def _write(self, data: bytes, seconds: float, what: str) -> None:
        assert self._stream is not None
        try:
            with trio.CancelScope(deadline=trio.current_time() + seconds) as scope:
                await fd_io.send(self._stream, self._fd, data)
            if scope.cancelled_caught:
                raise trio.TooSlowError
        except _IO_FAILURES as exc:
            raise self._failed(exc, seconds, what) from None

    async def _read(self, seconds: float, what: str) -> Reply:
        """The next reply, within ``seconds`` of the call.

        A reply already received (the second and later replies to pipelined commands usually
        arrive with the first) is returned without a deadline's cancel scope: only a wait for
        bytes needs one. The deadlines are plain cancel scopes rather than ``fail_at``, a
        generator-based context manager that cost as much as the read itself here.
        """
        assert self._stream is not None
        deadline = trio.current_time() + seconds
        try:
            while (event := self._conn.next_event()) is NEED_DATA:
                with trio.CancelScope(deadline=deadline) as scope:
                    data = await fd_io.receive(self._stream, self._fd, RECEIVE_BYTES)
                if scope.cancelled_caught:
                    raise trio.TooSlowError
                self._conn.receive_data(data)
        except _IO_FAILURES as exc:
            raise self._failed(exc, seconds, what) from None
        if isinstance(event, ConnectionClosed):
            raise self._closed_error()
        if event.request is None:
            # RFC 5321 §3.8: a 421 announcing that the server is closing.
            self._note_reply(event.reply)
            self._closing_reply = event.reply
            raise self._broken(f"{self.options.display} is closing: {event.reply}")
        if event.reply.code == 421:
            self._closing_reply = event.reply
            self.usable = False
        self.replies += 1
        self._note_reply(event.reply)
        return event.reply

    def _closed_error(self) -> SessionError:
        said = f" after {self._closing_reply}" if self._closing_reply else ""
        return self._broken(f"{self.options.display} closed the connection{said}")

    async def _command(self, command: Command, seconds: float, verb: str) -> Reply:
        if self._conn.closed:  # a 421 to the previous command
            raise self._closed_error()
        await self._write(self._send_traced(command), seconds, f"sending {verb}")
        return await self._read(seconds, f"waiting for the reply to {verb}")

    # --- the trace: every command (AUTH redacted) and reply, when the lessee set one ------

    def _send_traced(self, command: Command) -> bytes:
        wire = self._conn.send(command)
        if self.trace is not None:
            self.trace.event(command_line(command, wire))
        return wire

    def _note_reply(self, reply: Reply) -> None:
        if self.trace is not None:
            self.trace.event_lines(reply_lines(reply), is_error=reply.code >= 400)

    def _count_tls(self, status: str) -> None:
        if self.options.tls_count is not None:
            self.options.tls_count.add(status)

    def _note(self, text: str, *, error: bool = False) -> None:
        if self.trace is not None:
            (self.trace.error if error else self.trace.event)(text)
