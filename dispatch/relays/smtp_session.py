"""One outbound SMTP connection: the I/O around the sans-IO :class:`ClientConnection`.

Theory of operation: :meth:`SmtpClientSession.connect` opens a TCP connection (TLS from the
first byte for ``implicit``), reads the greeting, says EHLO (HELO if EHLO is refused),
upgrades with STARTTLS as the :data:`TlsMode` asks and authenticates when a username is
configured. :meth:`SmtpClientSession.send` then runs one mail transaction: MAIL, every RCPT
and DATA in one write when the server offers PIPELINING (RFC 2920), one by one otherwise; the
message streams from the ``.eml`` file in blocks, read in a worker thread, through
``ClientConnection.data_chunk`` — dot-stuffing only (RFC 5321 §4.5.2; the spool holds CRLF
lines, so the encoder's bare-CR/LF repair never changes a byte), the message is never parsed
or re-serialised. Every wait has its own deadline (:class:`Timeouts`).

Failures: a refused connection, a TLS failure, a timeout, a broken stream, a reply that
breaks the dialogue (``RemoteProtocolError``, a 3xx where none belongs, an unsolicited reply)
all make the session unusable (``usable`` becomes False): it is closed without QUIT and never
reused. While connecting they raise :class:`SessionError`; during a transaction they become
``transient`` outcomes for every recipient whose fate is not known yet, so a 550 already
received for one recipient stays permanent.

Ownership and stopping: the session owns its stream (TCP, possibly wrapped in TLS) and the
open message file during :meth:`send`. :meth:`aclose` sends QUIT (bounded, best effort) and
closes the stream; :meth:`abort` closes it at once. A cancelled :meth:`connect` closes its
half-open connection itself; a cancelled :meth:`send` leaves that to the owner (the relay),
which must call :meth:`abort`: a half-sent message must never be followed by anything but a
dropped connection, so that the server discards it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Final, Literal

import attrs
import trio

from dispatch.relays.base import DeliveryResult, Outcome, RecipientOutcome, outcome_of_code
from dispatch.smtp import NEED_DATA, ClientConnection, ClientLimits, Extensions, Reply
from dispatch.smtp import auth as sasl
from dispatch.smtp.errors import RemoteProtocolError, UnexpectedReply
from dispatch.smtp.events import (
    Auth,
    AuthResponse,
    Command,
    ConnectionClosed,
    Data,
    Ehlo,
    Helo,
    Mail,
    Quit,
    Rcpt,
    Rset,
    StartTls,
)

__all__ = [
    "SessionError",
    "SessionOptions",
    "SmtpClientSession",
    "Timeouts",
    "TlsMode",
    "TransactionResult",
]

log = logging.getLogger("dispatch.relays.smarthost")

# none: never TLS; opportunistic: STARTTLS when offered, else plaintext; required: STARTTLS or
# a transient failure; implicit: TLS from the first byte (RFC 8314 §3.3, "submissions").
TlsMode = Literal["none", "opportunistic", "required", "implicit"]

RECEIVE_BYTES: Final = 65_536
# Message blocks read from disk in a worker thread: large enough for few thread hops and
# few writes, small enough that a 25 MiB message is never held whole.
MESSAGE_BLOCK_BYTES: Final = 65_536
# QUIT is a courtesy (RFC 5321 §4.1.1.10): a server that does not answer quickly is not waited
# for, so closing a pool never takes long.
QUIT_SECONDS: Final = 5.0

# RFC 5321 §4.5.3.2 minimum client timeouts, in seconds.
RFC_GREETING: Final = 300.0  # §4.5.3.2.1 initial 220
RFC_MAIL: Final = 300.0  # §4.5.3.2.2 (also used for EHLO, STARTTLS, AUTH, RSET)
RFC_RCPT: Final = 300.0  # §4.5.3.2.3
RFC_DATA_INIT: Final = 120.0  # §4.5.3.2.4 the 354
RFC_DATA_BLOCK: Final = 180.0  # §4.5.3.2.5 each write of message data
RFC_DATA_END: Final = 600.0  # §4.5.3.2.6 the reply to the final "."
# The final reply gets this multiple of the relay's timeout (capped by the RFC's 10 minutes,
# never below the timeout itself): the server may be scanning or writing the message, and
# giving up there is what duplicates mail (RFC 5321 §4.5.3.2.6, §6.1).
DATA_END_FACTOR: Final = 5.0

_UNSENDABLE: Final = re.compile(r"[\r\n\0]")
# Best effort: "queued as X" (Postfix, Dispatch), "id=X" (Exim).
_REMOTE_ID: Final = re.compile(r"queued as[:\s]+<?([^\s<>;,]+)>?|\bid=([^\s;,]+)", re.IGNORECASE)


@attrs.frozen
class Timeouts:
    """How long each wait of a session may take, in seconds."""

    connect: float
    greeting: float
    command: float  # EHLO, STARTTLS and its handshake, AUTH, RSET
    mail: float
    rcpt: float
    data_init: float
    data_block: float
    data_end: float

    @classmethod
    def scaled(cls, timeout_seconds: float) -> Timeouts:
        """The relay's ``timeout_seconds`` caps every RFC 5321 §4.5.3.2 value, except the
        wait for the final reply, which gets ``DATA_END_FACTOR`` times it (see above)."""
        t = timeout_seconds
        return cls(
            connect=t,
            greeting=min(RFC_GREETING, t),
            command=min(RFC_MAIL, t),
            mail=min(RFC_MAIL, t),
            rcpt=min(RFC_RCPT, t),
            data_init=min(RFC_DATA_INIT, t),
            data_block=min(RFC_DATA_BLOCK, t),
            data_end=max(t, min(RFC_DATA_END, DATA_END_FACTOR * t)),
        )


@attrs.frozen
class SessionOptions:
    """Everything a session needs to know about the server it talks to.

    ``address`` is what is connected to (a host name or an IP address); ``tls_server_name``
    is the name the certificate is checked against and sent as SNI; ``display`` names the
    server in error texts and ``label`` names the relay ("relay primary").
    """

    label: str
    address: str
    port: int
    tls_server_name: str
    display: str
    helo_name: str
    tls: TlsMode
    ssl_context: ssl.SSLContext | None
    timeouts: Timeouts
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    # Only when the operator explicitly chose tls = "none": send credentials in the clear.
    auth_without_tls: bool = False
    limits: ClientLimits = attrs.Factory(ClientLimits)


class SessionError(Exception):
    """The session could not be set up, or broke: every pending recipient gets ``outcome``.

    ``detail`` says what failed; ``text`` prefixes it with the relay's label, for the log.
    ``tls_failure`` is True when the TLS handshake failed (a caller doing opportunistic TLS
    may then try again in plaintext).
    """

    def __init__(
        self, outcome: Outcome, label: str, detail: str, *, tls_failure: bool = False
    ) -> None:
        super().__init__(f"{label}: {detail}")
        self.outcome: Outcome = outcome
        self.detail = detail
        self.text = f"{label}: {detail}"
        self.tls_failure = tls_failure


@attrs.frozen
class TransactionResult:
    """What one mail transaction gave: an outcome per recipient (in the order given), the
    reply to the end of the data if it got that far, and the server's queue id if it said."""

    outcomes: tuple[RecipientOutcome, ...]
    final_reply: Reply | None = None
    remote_id: str | None = None
    answered: bool = True
    """Whether the server replied to any command of the transaction. If not, no byte of the
    message was sent (it only goes after a 354), so the server cannot have taken it."""

    def delivery_result(self) -> DeliveryResult:
        return DeliveryResult(self.outcomes, self.remote_id)

    @classmethod
    def all(cls, recipients: Sequence[str], outcome: Outcome, text: str) -> TransactionResult:
        return cls(tuple(RecipientOutcome(r, outcome, text) for r in recipients))


def remote_id_of(reply: Reply) -> str | None:
    """The server's queue id from a 250 reply to the end of data, if it looks like one."""
    match = _REMOTE_ID.search(reply.text)
    if match is None:
        return None
    return match.group(1) or match.group(2)


class SmtpClientSession:
    """One outbound SMTP connection (see the module docstring for ownership and failures).

    Build it with :meth:`connect`. ``usable`` is False once anything went wrong; ``tls_active``
    says whether the connection is encrypted (``transport`` gives "tls" or "plain" for stats);
    ``idle_since`` is set by the pool.
    """

    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self.timeouts = options.timeouts
        self.usable = True
        self.tls_active = False
        self.transactions = 0
        self.replies = 0  # replies read to our commands (unsolicited 421s not counted)
        self.checked_at_reuse = True  # False: taken from the pool without RSET (relays/smarthost.py)
        # The last transaction ended with the reply to its data: the server is ready for the
        # next MAIL without RSET (RFC 5321 §4.1.4). Not after a transaction that stopped short.
        self.ended_cleanly = False
        self.idle_since = 0.0
        self._conn = ClientConnection(options.limits)
        self._stream: trio.abc.Stream | None = None
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
    async def connect(cls, options: SessionOptions) -> SmtpClientSession:
        """Connect, greet, STARTTLS and AUTH as configured; raise `SessionError` on failure
        (the connection is then already closed). Cancellation closes the connection too."""
        session = cls(options)
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
        if options.username:
            await self._authenticate()

    async def _connect_tcp(self) -> None:
        options = self.options
        try:
            with trio.fail_after(self.timeouts.connect):
                self._stream = await trio.open_tcp_stream(options.address, options.port)
        except trio.TooSlowError:
            raise self._broken(
                f"connection to {options.display} timed out after {self.timeouts.connect:g} s"
            ) from None
        except OSError as exc:
            raise self._broken(
                f"connection to {options.display} {_why_not_connected(exc)}"
            ) from None

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
                raise self._broken(f"{self.options.display} does not offer STARTTLS")
            return
        reply = await self._command(StartTls(), self.timeouts.command, "STARTTLS")
        if reply.code != 220:
            if required:
                raise self._broken(f"{self.options.display} refused STARTTLS: {reply}")
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
        self._stream = tls_stream
        try:
            with trio.fail_after(self.timeouts.command):
                await tls_stream.do_handshake()
        except trio.TooSlowError:
            raise self._broken(
                f"TLS handshake with {options.display} timed out after {self.timeouts.command:g} s",
                tls_failure=True,
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                detail = (
                    f"TLS certificate of {options.display} failed verification: "
                    f"{cause.verify_message or cause}"
                )
            else:
                detail = f"TLS handshake with {options.display} failed: {cause or exc}"
            raise self._broken(detail, tls_failure=True) from None
        self.tls_active = True

    async def _authenticate(self) -> None:
        """AUTH PLAIN (RFC 4616), else LOGIN, and only over TLS unless told otherwise."""
        options = self.options
        if not self.tls_active and not options.auth_without_tls:
            # Permanent: retrying will not make the connection encrypted; the operator must
            # enable TLS on the server or set tls = "none" explicitly.
            self.usable = False
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

    # --- one transaction -------------------------------------------------------------------

    async def reset(self) -> bool:
        """RSET before reusing the connection (RFC 5321 §4.1.1.5). It doubles as a check that
        the server is still there: False means the session is unusable (close it)."""
        try:
            reply = await self._command(Rset(), self.timeouts.command, "RSET")
        except SessionError:
            return False
        if reply.code != 250:
            self.usable = False
        return self.usable

    async def send(
        self,
        mail_from: str,
        recipients: Sequence[str],
        message_path: Path,
        size: int,
        *,
        smtputf8: bool = False,
    ) -> TransactionResult:
        """Run one mail transaction; every ordinary failure is an outcome, not an exception.

        Checks that need no round trip come first and fail permanently without sending:
        SMTPUTF8 needed but not offered (RFC 6531 §3.4) and a message larger than the
        server's SIZE (RFC 1870 §4). BODY=8BITMIME is declared whenever the server offers it
        (RFC 6152): the message is sent as stored, so it is never downgraded, and declaring it
        for a 7-bit message is harmless; without 8BITMIME the bytes go as they are.
        """
        if not self.usable:
            raise RuntimeError("send() on an unusable session")  # a bug in the pool
        ext = self.extensions
        display = self.options.display
        if any(_UNSENDABLE.search(a) for a in (mail_from, *recipients)):
            # It would end the command line early and inject another (the core refuses it).
            return TransactionResult.all(
                recipients, "permanent", f"{self.options.label}: CR, LF or NUL in an address"
            )
        needs_utf8 = smtputf8 or not all(a.isascii() for a in (mail_from, *recipients))
        if needs_utf8 and not ext.smtputf8:
            return TransactionResult.all(
                recipients,
                "permanent",
                f"{self.options.label}: the message needs SMTPUTF8, which {display} does not "
                "offer (RFC 6531 §3.4)",
            )
        if ext.size is not None and size > ext.size:
            return TransactionResult.all(
                recipients,
                "permanent",
                f"{self.options.label}: the message ({size} bytes) is larger than the "
                f"{ext.size} bytes {display} accepts (RFC 1870)",
            )
        try:
            message, first = await trio.to_thread.run_sync(_open_message, message_path)
        except OSError as exc:
            return TransactionResult.all(
                recipients, "transient", f"{self.options.label}: cannot read the message: {exc}"
            )
        mail = Mail(
            mail_from,
            size=size if ext.has("SIZE") else None,
            body="8BITMIME" if ext.eightbitmime else None,
            smtputf8=needs_utf8,
        )
        outcomes: list[RecipientOutcome | None] = [None] * len(recipients)
        final: Reply | None = None
        self.transactions += 1
        self.ended_cleanly = False
        replies_before = self.replies
        try:
            final = await self._transaction(mail, recipients, (message, first), outcomes)
        except SessionError as exc:
            for i, recipient in enumerate(recipients):
                if outcomes[i] is None:
                    outcomes[i] = RecipientOutcome(recipient, exc.outcome, exc.text)
        finally:
            message.close()  # a read-only file: closing cannot block on writing back
        self._check_quiet()
        done = tuple(o for o in outcomes if o is not None)
        assert len(done) == len(recipients)
        remote_id = remote_id_of(final) if final is not None and final.is_positive else None
        return TransactionResult(done, final, remote_id, answered=self.replies > replies_before)

    async def _transaction(
        self,
        mail: Mail,
        recipients: Sequence[str],
        message: tuple[BinaryIO, bytes],
        outcomes: list[RecipientOutcome | None],
    ) -> Reply | None:
        """MAIL, RCPT..., DATA, the message; fills ``outcomes`` as the replies come in."""
        t = self.timeouts
        pipelined = self.extensions.pipelining
        if pipelined:
            # RFC 2920 §3.1: MAIL, RCPT and DATA may all go in one write; the replies are
            # paired with them in order by the ClientConnection.
            wire = self._conn.send(mail)
            wire += b"".join(self._conn.send(Rcpt(r)) for r in recipients)
            wire += self._conn.send(Data())
            await self._write(wire, t.mail, "sending MAIL, RCPT and DATA")
            mail_reply = await self._read(t.mail, "waiting for the reply to MAIL")
        else:
            mail_reply = await self._command(mail, t.mail, "MAIL")
        self._expect_final(mail_reply, "MAIL")
        if not mail_reply.is_positive:
            _decide_all(outcomes, recipients, mail_reply)
            if not pipelined:
                return None  # the next reuse starts with RSET
        accepted: list[int] = []
        for i, recipient in enumerate(recipients):
            if pipelined:
                reply = await self._read(t.rcpt, "waiting for the reply to RCPT")
            else:
                reply = await self._command(Rcpt(recipient), t.rcpt, "RCPT")
            self._expect_final(reply, "RCPT")
            if outcomes[i] is not None:
                continue  # MAIL was refused: every RCPT is answered 503
            if reply.is_positive:
                accepted.append(i)
            else:
                outcomes[i] = RecipientOutcome(recipient, outcome_of_code(reply.code), str(reply))
        if not pipelined and not accepted:
            return None  # no DATA without a recipient; the next reuse starts with RSET
        if pipelined:
            data_reply = await self._read(t.data_init, "waiting for the reply to DATA")
        else:
            data_reply = await self._command(Data(), t.data_init, "DATA")
        if data_reply.code != 354:
            if data_reply.is_positive or data_reply.is_intermediate:
                raise self._unexpected(data_reply, "DATA")
            _decide(outcomes, recipients, accepted, data_reply)
            return None
        if not accepted:
            # RFC 2920 §3.1: a server that said 354 although no RCPT succeeded gets an empty
            # message; it has no recipient to deliver it to.
            await self._write(self._conn.end_data(), t.data_block, "ending an empty DATA")
            await self._read(t.data_end, "waiting for the reply to an empty DATA")
            return None
        await self._send_message(*message)
        final = await self._read(t.data_end, "waiting for the reply to the end of data")
        self._expect_final(final, "the end of data")
        self.ended_cleanly = True
        _decide(outcomes, recipients, accepted, final)
        return final

    async def _send_message(self, message: BinaryIO, first: bytes) -> None:
        """Send the message, starting with ``first`` (its first block, read on opening)."""
        block = first
        while block:
            wire = self._conn.data_chunk(block)
            if wire:
                await self._write(wire, self.timeouts.data_block, "sending the message")
            if len(block) < MESSAGE_BLOCK_BYTES:
                break  # a short read of a regular file is its end: no thread hop to learn it
            try:
                block = await trio.to_thread.run_sync(message.read, MESSAGE_BLOCK_BYTES)
            except OSError as exc:
                # Half a message has gone out: only dropping the connection makes the server
                # discard it (it must never see the final ".").
                self.usable = False
                raise SessionError(
                    "transient", self.options.label, f"cannot read the message: {exc}"
                ) from None
        await self._write(self._conn.end_data(), self.timeouts.data_block, "ending the message")

    def _expect_final(self, reply: Reply, what: str) -> None:
        """MAIL, RCPT and the end of data take 2xx, 4xx or 5xx, nothing else."""
        if reply.is_intermediate:
            raise self._unexpected(reply, what)

    def _unexpected(self, reply: Reply, what: str) -> SessionError:
        return self._broken(f"unexpected reply to {what} from {self.options.display}: {reply}")

    def _check_quiet(self) -> None:
        """After a transaction nothing more may have arrived: an extra or unsolicited reply
        means the dialogue is out of step, and the connection is not reused."""
        if not self.usable:
            return
        try:
            event = self._conn.next_event()
        except RemoteProtocolError as exc:
            log.info(
                "%s: %s out of step (%s); not reused", self.options.label, self.options.display, exc
            )
            self.usable = False
            return
        if event is not NEED_DATA or self._conn.closed:
            self.usable = False

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
            stream, self._stream = self._stream, None
            if stream is not None:
                with trio.move_on_after(QUIT_SECONDS):
                    await stream.aclose()

    async def abort(self) -> None:
        """Drop the connection now, without QUIT. Safe to call in a cancelled scope."""
        self.usable = False
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    # --- I/O ---------------------------------------------------------------------------------

    def _broken(self, detail: str, *, tls_failure: bool = False) -> SessionError:
        self.usable = False
        return SessionError("transient", self.options.label, detail, tls_failure=tls_failure)

    @contextlib.contextmanager
    def _guard(self, timeout: float, what: str) -> Iterator[None]:
        """Turn a timeout, a broken stream or a protocol error into a `SessionError`."""
        display = self.options.display
        try:
            with trio.fail_after(timeout):
                yield
        except trio.TooSlowError:
            raise self._broken(f"timed out after {timeout:g} s {what} ({display})") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            raise self._broken(f"connection to {display} lost {what}: {cause}") from None
        except UnexpectedReply as exc:
            raise self._unexpected(exc.reply, exc.command) from None
        except RemoteProtocolError as exc:
            raise self._broken(f"protocol error from {display} {what}: {exc}") from None

    async def _write(self, data: bytes, seconds: float, what: str) -> None:
        assert self._stream is not None
        with self._guard(seconds, what):
            await self._stream.send_all(data)

    async def _read(self, seconds: float, what: str) -> Reply:
        assert self._stream is not None
        with self._guard(seconds, what):
            while True:
                event = self._conn.next_event()
                if event is NEED_DATA:
                    data = await self._stream.receive_some(RECEIVE_BYTES)
                    self._conn.receive_data(bytes(data))  # SSLStream hands out bytearrays
                elif isinstance(event, ConnectionClosed):
                    raise self._closed_error()
                elif event.request is None:
                    # RFC 5321 §3.8: a 421 announcing that the server is closing.
                    self._closing_reply = event.reply
                    raise self._broken(f"{self.options.display} is closing: {event.reply}")
                else:
                    if event.reply.code == 421:
                        self._closing_reply = event.reply
                        self.usable = False
                    self.replies += 1
                    return event.reply

    def _closed_error(self) -> SessionError:
        said = f" after {self._closing_reply}" if self._closing_reply else ""
        return self._broken(f"{self.options.display} closed the connection{said}")

    async def _command(self, command: Command, seconds: float, verb: str) -> Reply:
        if self._conn.closed:  # a 421 to the previous command
            raise self._closed_error()
        await self._write(self._conn.send(command), seconds, f"sending {verb}")
        return await self._read(seconds, f"waiting for the reply to {verb}")


def _decide(
    outcomes: list[RecipientOutcome | None],
    recipients: Sequence[str],
    indices: Sequence[int],
    reply: Reply,
) -> None:
    outcome = outcome_of_code(reply.code)
    for i in indices:
        outcomes[i] = RecipientOutcome(recipients[i], outcome, str(reply))


def _decide_all(
    outcomes: list[RecipientOutcome | None], recipients: Sequence[str], reply: Reply
) -> None:
    _decide(outcomes, recipients, range(len(recipients)), reply)


def _why_not_connected(exc: OSError) -> str:
    """ "refused", "timed out", ... out of trio's "all attempts to connect failed" error."""
    causes: list[BaseException] = [exc]
    group = exc.__cause__
    if isinstance(group, BaseExceptionGroup):
        causes = list(group.exceptions)
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "refused"
    first = causes[-1]
    if isinstance(first, OSError) and first.strerror:
        return f"failed: {first.strerror}"
    return f"failed: {first}"


def _open_message(path: Path) -> tuple[BinaryIO, bytes]:
    """Open the spooled message and read its first block: one thread hop for most mail."""
    message = path.open("rb")
    try:
        return message, message.read(MESSAGE_BLOCK_BYTES)
    except BaseException:
        message.close()
        raise
