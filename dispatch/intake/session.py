"""One inbound SMTP session: the I/O around the sans-IO :class:`ServerConnection`.

Theory of operation: the loop asks the protocol core for the next event and answers it; the
replies of pipelined commands are collected and written together when the core needs more
bytes (RFC 2920 §3.2: as few writes as possible). Message data streams from ``DataChunk``
events into a spool :class:`~dispatch.spool.IncomingMessage`; at the end of the data the
message is committed (fsynced) and only then is ``250 … queued as <id>`` sent — that commit runs
to its end (the spool's thread hop is never cancelled) and that reply's write is shielded from
cancellation, so a shutdown never turns an accepted message into a ``421``.

Ownership and stopping: :class:`SmtpSession` owns its
:class:`~dispatch.intake.transport.SessionTransport` (the stream it is given, the TLS stream
STARTTLS may put over it, the replies not yet written) and its
:class:`~dispatch.intake.transaction.TransactionSlot` (the open spool message).
:meth:`SmtpSession.run` returns when the session ends for any reason (QUIT, EOF, a fatal
protocol error, a timeout); it closes nothing itself — the listener closes the stream. On
cancellation (shutdown) an open message is discarded (nothing half-written stays in the
spool) and the listener then calls :meth:`SmtpSession.say_goodbye` to send ``421``.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from dispatch.config.settings import ListenerSettings
from dispatch.intake.dkim_verify import MessageCopy, verify_received
from dispatch.intake.login import BUSY as BUSY_CHECKING_PASSWORDS
from dispatch.intake.login import SmtpAuthenticator
from dispatch.intake.received import protocol_name, received_header
from dispatch.intake.transaction import MailTransaction, MessageSpool, TransactionSlot
from dispatch.intake.transport import HandshakeFailed, SessionEnded, SessionTransport
from dispatch.intake.violations import note_violation
from dispatch.monitoring.dialogue import command_line, is_traced_command, reply_lines
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Trace, Tracer
from dispatch.security.throttle import FailureThrottle
from dispatch.smtp import NEED_DATA, PAUSED, Limits, Reply, ServerConnection, State, replies
from dispatch.smtp.events import (
    Auth,
    AuthResponse,
    BareLineEnding,
    Bdat,
    CommandError,
    ConnectionClosed,
    Data,
    DataChunk,
    DataEnd,
    Ehlo,
    Event,
    Helo,
    Help,
    Mail,
    Noop,
    PipelinedAfterStartTls,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    UnknownCommand,
    UnsynchronisedPipelining,
    Vrfy,
    WrongProtocol,
)
from dispatch.spool import Envelope, IncomingMessage, SpoolFullError, SpoolWriteError
from dispatch.storage.records import AuditEntry, MessageEvent

log = logging.getLogger("dispatch.smtp")

MAX_ERROR_REPLIES: Final = 3  # SPEC §3: after 3 error replies, 421 and close


@attrs.frozen
class IntakeContext:
    """What every session shares: owned by the listener, read-only to sessions."""

    settings: Callable[[], ListenerSettings]
    spool: MessageSpool
    stats: Stats
    auth_throttle: FailureThrottle
    tls: ssl.SSLContext | None
    record: Callable[[MessageEvent], None]  # the message log; never blocks
    # A message committed, with its Subject: its ``received`` event, called at once after the
    # commit's ``on_commit`` (no checkpoint between); never blocks. The main process records
    # the event; an intake worker sends it inside its announcement of the commit.
    received: Callable[[Envelope, str | None], None]
    tracer: Tracer
    audit: Callable[[AuditEntry], None]  # the audit log (AUTH throttling); never blocks
    # The reply refusing a recipient at RCPT (a suppressed address, intake/suppression.py),
    # None to accept it. Answers from memory; an intake worker process has none (accepts).
    refuse_recipient: Callable[[str], Awaitable[Reply | None]] | None = None


class SmtpSession:
    """One SMTP connection from ``peer_ip`` (see the module docstring for ownership).

    ``local_port``: the listening port the client connected to, which decides its policy;
    ``implicit_tls``: ``stream`` is already TLS (a ``listener.tls_ports`` port, RFC 8314).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer_ip: str,
        context: IntakeContext,
        trace: Trace,
        *,
        local_port: int = 0,
        implicit_tls: bool = False,
    ) -> None:
        self.transport = SessionTransport(stream)
        self.trace = trace
        self.peer_ip = peer_ip
        self.context = context
        self.settings = context.settings()
        # The submission policy (docs/smtp.md): on listener.submission_ports and on every
        # implicit-TLS port, AUTH before MAIL (RFC 6409 §4.3) and TLS before AUTH (RFC 8314).
        self.submission = implicit_tls or local_port in self.settings.submission_ports
        self.conn = ServerConnection(
            Limits(max_message_bytes=self.settings.max_message_bytes),
            forbid_unauth_pipelining=True,  # see _greet and docs/smtp.md
            tls_active=implicit_tls,
        )
        self.auth = SmtpAuthenticator(
            self.settings.users, context.auth_throttle, peer_ip, context.audit
        )
        self.helo = ""
        self.esmtp = False
        self.errors = 0
        self.messages = 0
        self.started = time.monotonic()
        self.transactions = TransactionSlot()
        self._waiting_since = 0.0  # trio time the wait for the next command began

    @property
    def tls_active(self) -> bool:
        return self.conn.tls_active

    @property
    def stream(self) -> trio.abc.Stream:
        """The outermost stream: the TLS one after STARTTLS (the listener closes it)."""
        return self.transport.stream

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until it ends; see the module docstring for cancellation."""
        try:
            await self._greet()
            with trio.move_on_after(self.settings.session_timeout_seconds) as deadline:
                await self._serve()
            if deadline.cancelled_caught:
                log.info("session deadline reached; closing")
                await self.say_goodbye(replies.TIMEOUT)
        except SessionEnded:
            pass
        finally:
            self.transactions.current = None
            await self.transactions.abort_dropped()
            stats = self.context.stats
            stats.smtp_sessions.add("tls" if self.tls_active else "plain")
            stats.smtp_session_seconds.observe(time.monotonic() - self.started)

    async def _greet(self) -> None:
        """Owe the greeting, or refuse a client that talked before it (RFC 5321 §4.3.1).

        Bytes that can be read before the greeting is written were sent before the client
        could have seen it. A read that does not wait, right before the greeting is queued
        and with no await between it and the write, finds them; they are fed to the core,
        which reports `UnsynchronisedPipelining` ("CONNECT") while the client is
        unauthenticated. The read adds one system call and no wait, so a correct client sees
        no change in latency and can never be refused; a client whose early bytes arrive just
        after the read is not caught (Postfix's postscreen delays the greeting to catch those;
        Dispatch does not). Not done on a TLS stream: what is readable there is TLS records,
        not commands.
        """
        self._waiting_since = trio.current_time()
        early = self.transport.receive_ready()
        if early is not None:
            self.conn.receive_data(early)
        event = self.conn.next_event()
        if isinstance(event, UnsynchronisedPipelining):
            await self._handle(event)
        else:
            self._reply(replies.greeting(self.settings.server_name))

    async def _serve(self) -> None:
        self._waiting_since = trio.current_time()
        while not self.conn.closed:
            if self.transactions.has_dropped:
                await self.transactions.abort_dropped()
            event = self.conn.next_event()
            if event is NEED_DATA:
                await self._flush()
                await self._receive()
            elif event is PAUSED:
                if self.conn.state is not State.STARTTLS:
                    raise AssertionError("paused with every reply sent")  # a core bug
                await self._start_tls()
                self._waiting_since = trio.current_time()
            elif isinstance(event, ConnectionClosed | PipelinedAfterStartTls):
                if isinstance(event, PipelinedAfterStartTls):
                    log.warning("plaintext pipelined after STARTTLS from %s: closed", self.peer_ip)
                    self.trace.error("plaintext pipelined after STARTTLS: closed, no reply")
                    self.context.stats.smtp_violations.add("pipelining_after_starttls")
                break
            else:
                await self._handle(event)
                self._waiting_since = trio.current_time()
        await self._flush()

    async def _receive(self) -> None:
        # The per-command timeout runs from the last complete command (or line of message
        # data), not from the last byte, so a client dripping one byte every few seconds
        # (slowloris) cannot keep its connection slot until the session deadline.
        deadline = self._waiting_since + self.settings.connection_timeout_seconds
        data = await self.transport.receive(deadline)
        if data is None:
            log.info("idle for %.0f s; closing", self.settings.connection_timeout_seconds)
            await self.say_goodbye(replies.TIMEOUT)
            raise SessionEnded
        self.conn.receive_data(data)

    def _reply(self, reply: Reply, *, policy: bool = False) -> None:
        """Queue ``reply``. A 5xx counts toward MAX_ERROR_REPLIES unless it is ``policy``
        (a recipient refused for what it is, not for the client's conduct: a message to
        many suppressed addresses must not end its session)."""
        self.transport.queue(self.conn.send(reply))
        self.context.stats.smtp_replies.add(str(reply.code))
        if self.trace.recording:  # not in an intake worker (monitoring/untraced.py)
            self.trace.event_lines(reply_lines(reply), is_error=reply.code >= 400)
        if reply.code >= 500 and not policy and not self.conn.closed:
            self.errors += 1
            if self.errors >= MAX_ERROR_REPLIES:
                log.info("%d error replies; closing", self.errors)
                self.transport.queue(self.conn.send(replies.TOO_MANY_ERRORS))
                self.context.stats.smtp_replies.add("421")
                self.trace.event_lines(reply_lines(replies.TOO_MANY_ERRORS), is_error=True)

    async def _flush(self, *, shield: bool = False) -> None:
        await self.transport.flush(self.settings.connection_timeout_seconds, shield=shield)

    async def say_goodbye(self, reply: Reply) -> None:
        """Send a closing ``421`` if the session is still open, best effort and bounded."""
        if self.conn.closed:
            return
        self.transport.queue(self.conn.send(reply))
        self.context.stats.smtp_replies.add(str(reply.code))
        self.trace.event_lines(reply_lines(reply))
        await self.transport.goodbye(self.settings.connection_timeout_seconds)

    # --- events ----------------------------------------------------------------------------

    async def _handle(self, event: Event) -> None:
        self._count_command(event)
        match event:
            case Ehlo(hostname):
                self._reset(hostname, esmtp=True)
                self._reply(replies.ehlo(self.settings.server_name, hostname, self._keywords()))
            case Helo(hostname):
                self._reset(hostname, esmtp=False)
                self._reply(replies.helo(self.settings.server_name))
            case Mail():
                self._reply(self._mail(event))
            case Rcpt():
                reply = await self._rcpt(event)
                self._reply(reply, policy=reply is not replies.RECIPIENT_OK)
            case Data():
                await self._open_message()
                self._reply(replies.START_DATA)
            case Bdat(size):
                await self._open_message()
                assert self.transactions.current is not None
                self.transactions.current.chunk_size = size
            case DataChunk(data):
                if self.transactions.current is not None:
                    await self.transactions.current.write(data)
            case DataEnd():
                await self._end_data(event)
            case Rset():
                self.transactions.current = None
                self._reply(replies.OK)
            case Noop():
                self._reply(replies.OK)
            case Help():
                self._reply(replies.HELP)
            case Vrfy():
                self._reply(replies.CANNOT_VRFY)
            case Quit():
                self._reply(replies.SERVICE_CLOSING)
            case StartTls():
                self._reply(
                    replies.READY_TO_START_TLS if self.context.tls else replies.TLS_NOT_AVAILABLE
                )
            case Auth():
                await self._auth_start(event)
            case AuthResponse():
                self._auth_result(await self.auth.respond(event))
            case CommandError(reply=reply) | UnknownCommand(reply=reply):
                self._reply(reply)
            case WrongProtocol() | BareLineEnding() | UnsynchronisedPipelining():
                await self._refuse_violation(event)
            case _:
                raise AssertionError(f"unhandled SMTP event {event!r}")

    async def _refuse_violation(
        self, event: WrongProtocol | BareLineEnding | UnsynchronisedPipelining
    ) -> None:
        """Answer what the core ended the session for (its reply closes the connection)."""
        reply = note_violation(event, self.peer_ip, self.context.stats)
        if isinstance(event, BareLineEnding):
            await self._discard_message()
        self._reply(reply)

    def _count_command(self, event: Event) -> None:
        if self.trace.recording and is_traced_command(event):
            self.trace.event(command_line(event))  # AUTH credentials redacted there
        if isinstance(event, UnknownCommand | CommandError | WrongProtocol):
            verb = event.verb
        elif isinstance(event, DataChunk | DataEnd | AuthResponse | UnsynchronisedPipelining):
            return  # not commands
        else:
            verb = type(event).__name__.upper()
        self.context.stats.smtp_commands.add(verb)

    def _keywords(self) -> list[str]:
        keywords = [
            "PIPELINING",
            f"SIZE {self.settings.max_message_bytes}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",  # RFC 3461: NOTIFY, ORCPT, RET, ENVID (dispatch/delivery/bounces.py)
        ]
        if self.context.tls and not self.tls_active:
            keywords.append("STARTTLS")
        if self.settings.users and (self.tls_active or self._plaintext_auth_allowed):
            keywords.append("AUTH PLAIN LOGIN")
        return keywords

    def _reset(self, helo: str, *, esmtp: bool) -> None:
        self.helo, self.esmtp = helo, esmtp
        self.transactions.current = None  # EHLO resets the transaction (RFC 5321 §4.1.4)

    @property
    def _plaintext_auth_allowed(self) -> bool:
        return self.settings.allow_unsecure_auth and not self.submission

    def _mail(self, command: Mail) -> Reply:
        if (self.settings.require_auth or self.submission) and self.auth.identity is None:
            return replies.AUTH_REQUIRED
        self.transactions.current = MailTransaction.begin(command)
        return replies.SENDER_OK

    async def _rcpt(self, command: Rcpt) -> Reply:
        transaction = self.transactions.current
        assert transaction is not None
        refuse = self.context.refuse_recipient
        refusal = None if refuse is None else await refuse(command.forward_path)
        if refusal is not None:
            self.trace.error(f"refused {command.forward_path}: {refusal.text}")
            return refusal
        transaction.add_recipient(command)
        return replies.RECIPIENT_OK

    async def _auth_start(self, command: Auth) -> None:
        if not (self.tls_active or self._plaintext_auth_allowed):
            self._reply(replies.ENCRYPTION_REQUIRED)
            return
        self._auth_result(await self.auth.start(command))

    def _auth_result(self, reply: Reply) -> None:
        if reply.code == 235:
            self.context.stats.smtp_auth.add("success")
            log.info("authenticated as %s", self.auth.identity)
            self.trace.event(f"authenticated as {self.auth.identity}")
        elif reply is BUSY_CHECKING_PASSWORDS:
            self.context.stats.smtp_auth.add("busy")
        elif reply.code == 454:
            self.context.stats.smtp_auth.add("throttled")
        elif reply.code in (535, 501):
            self.context.stats.smtp_auth.add("failure")
        self._reply(reply)

    # --- message data ----------------------------------------------------------------------

    async def _open_message(self) -> None:
        transaction = self.transactions.current
        assert transaction is not None
        if self.settings.dkim_verify and transaction.message is None:  # a new message, not
            transaction.dkim_copy = MessageCopy()  # a later BDAT chunk: start a fresh copy
        await transaction.open_message(self.context.spool, self._received_header)

    def _received_header(self, message_id: str) -> bytes:
        return received_header(
            server_name=self.settings.server_name,
            helo=self.helo,
            peer_ip=self.peer_ip,
            protocol=protocol_name(
                esmtp=self.esmtp, tls=self.tls_active, authenticated=self.auth.identity is not None
            ),
            message_id=message_id,
            timestamp=time.time(),
        )

    async def _end_data(self, end: DataEnd) -> None:
        transaction = self.transactions.current
        if end.error is not None or transaction is None or transaction.message is None:
            if end.error is replies.NUL_IN_DATA:
                log.warning("NUL in message data from %s: message refused", self.peer_ip)
                self.context.stats.smtp_violations.add("nul_in_data")
            await self._discard_message()
            self.transactions.current = None  # the core has ended the transaction too
            self._reply(end.error or replies.BAD_SEQUENCE)
            return
        if not end.last:
            self._reply(replies.chunk_received(transaction.chunk_size))
            return
        transaction.loops.finish()
        if transaction.loops.is_loop:
            log.warning("mail loop: %d Received headers", transaction.loops.received_count)
            self.context.stats.smtp_loops.add()
            await self._discard_message()
            self._reply(replies.LOOP_DETECTED)
            return
        await self._commit(transaction, transaction.message)

    async def _commit(self, transaction: MailTransaction, message: IncomingMessage) -> None:
        stats = self.context.stats
        # The commit runs to its end whatever happens (the spool's thread hop), and once the
        # message is durable its 250 must go out, even during shutdown: that flush is shielded.
        try:
            envelope = await message.commit(
                mail_from=transaction.mail_from,
                recipients=tuple(transaction.recipients),
                source="smtp",
                peer_ip=self.peer_ip,
                auth_identity=self.auth.identity,
                mail_dsn=transaction.mail_dsn,
                recipient_dsn=transaction.recipient_dsn,
            )
        except SpoolWriteError as exc:
            full = isinstance(exc, SpoolFullError)
            stats.spool_writes.add("full" if full else "error")
            log.error("spool write failed: %s", exc)
            self.transactions.current = None
            self._reply(replies.INSUFFICIENT_STORAGE if full else replies.LOCAL_ERROR)
            return
        stats.spool_writes.add("ok")
        stats.messages_received.add("smtp")
        self.messages += 1
        transaction.message = None  # committed: nothing left to abort
        self.transactions.current = None
        self.context.received(envelope, transaction.loops.subject)
        self.context.tracer.message_queued(
            envelope.id,
            mail_from=envelope.mail_from,
            recipients=envelope.recipients,
            size=envelope.size,
            parent=self.trace,
        )
        log.info(
            "queued %s: %d recipient(s), %d bytes",
            envelope.id,
            len(envelope.recipients),
            envelope.size,
        )
        self._reply(replies.queued(envelope.id))
        await self._flush(shield=True)
        if transaction.dkim_copy is not None:  # after the 250: see intake/dkim_verify.py
            copy, transaction.dkim_copy = transaction.dkim_copy, None
            await verify_received(copy, self.settings, self.context.stats, envelope.id)

    async def _discard_message(self) -> None:
        """Abort the open transaction's message, keeping the transaction itself."""
        self.transactions.discard_message()
        await self.transactions.abort_dropped()

    # --- STARTTLS --------------------------------------------------------------------------

    async def _start_tls(self) -> None:
        """RFC 3207: after our 220, the handshake; then the session starts over."""
        assert self.context.tls is not None
        await self._flush()
        try:
            await self.transport.start_tls(self.context.tls, self.trace)
        except HandshakeFailed as exc:
            log.info("TLS handshake with %s failed: %s", self.peer_ip, exc)
            raise SessionEnded from exc
        self.conn.tls_established()
        self.transactions.current = None
        self.helo = ""
