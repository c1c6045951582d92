"""The ``smtp`` relay: a smarthost reached with Dispatch's own SMTP client, connections reused.

Theory of operation: each :meth:`SmtpRelayClient.deliver` borrows one of ``max_inflight``
tokens of a :class:`trio.CapacityLimiter`, takes the most recently used idle connection from
the pool (or opens one), runs one transaction on it and gives it back. A connection whose
transaction ended with the reply to its data less than ``FRESH_SECONDS`` ago is reused at
once (a completed transaction leaves the server ready for the next MAIL, RFC 5321 §4.1.4);
any other is sent RSET first (§4.1.1.5), which proves the server has not dropped it while
idle, and if that fails the next idle connection, or a new one, is tried. If a connection
reused without RSET turns out dead — not one reply to the transaction's commands — the
transaction is run once more on another: the message only goes after a 354, so the dead one
cannot have taken it and this costs no duplicate. A connection idle for more than
``IDLE_SECONDS`` is closed (QUIT) at the next delivery instead of being reused. The pool
never holds more connections than ``max_inflight``: one is only opened by a delivery holding
a token, when none is idle.

Suspension: a connection that times out (connect, greeting, EHLO, TLS) marks the upstream
as hung. For the next ``timeout_seconds`` its deliveries fail fast (``transient``, retried on
schedule) instead of each holding a delivery worker for a whole timeout; after that one trial
connection at a time goes through until one succeeds. So a hung upstream ties up at most one
worker at a time, and other routes keep delivering.

Ownership and stopping: the relay owns its idle connections. :meth:`SmtpRelayClient.aclose`
QUITs them (bounded) and stops pooling; deliveries still running then close their connection
when done. Cancelling a delivery drops its connection without QUIT (a half-sent message must
never be completed) and never pools it.

Outcome mapping (see `dispatch.relays.base`): connection, TLS and timeout failures make every
recipient ``transient``, with a text naming the relay and what failed; each RCPT reply decides
its recipient (5xx ``permanent``, 4xx ``transient``); the reply after the data decides every
accepted recipient. Refusing to send a password without TLS is ``permanent``.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

import trio

from dispatch.config.settings import SmtpRelay
from dispatch.relays.base import DeliveryRequest, DeliveryResult
from dispatch.relays.smtp_session import (
    SessionError,
    SessionOptions,
    SmtpClientSession,
    Timeouts,
    TlsMode,
    TransactionResult,
)

__all__ = ["IDLE_SECONDS", "SmtpRelayClient", "count_outcomes", "tls_client_context"]

log = logging.getLogger("dispatch.relays.smarthost")

# A pooled connection idle for longer is closed rather than reused: well under the 5 minutes
# a server waits for the next command (RFC 5321 §4.5.3.2.7), so it is rarely already gone.
IDLE_SECONDS: Final = 60.0
FRESH_SECONDS: Final = 2.0
"""A pooled connection whose last transaction ended cleanly less than this long ago is reused
without an RSET round trip."""

_TLS_MODES: Final[dict[str, TlsMode]] = {
    "none": "none",
    "auto": "opportunistic",
    "starttls": "required",
    "implicit": "implicit",
}


def tls_client_context(*, verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """A client context: the system store (or ``ca_file``), or no verification at all."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def count_outcomes(result: DeliveryResult) -> tuple[int, int]:
    """What one attempt adds to the relay's ``delivered`` and ``failed`` counters.

    Counted per attempt, like the local relay: 1 to ``delivered`` if any recipient was
    delivered, 1 to ``failed`` if any was not (transient or permanent); a mixed result adds
    to both."""
    outcomes = [o.outcome for o in result.outcomes]
    return int("delivered" in outcomes), int(any(o != "delivered" for o in outcomes))


class SmtpRelayClient:
    """A configured ``kind = "smtp"`` relay (implements `dispatch.relays.base.Relay`).

    Counters for monitoring, plain ints: ``inflight`` (deliveries running now), ``delivered``
    and ``failed`` (attempts, see `count_outcomes`), ``connections`` (connections opened, by
    "tls" or "plain").
    """

    kind: str = "smtp"

    def __init__(
        self,
        settings: SmtpRelay,
        helo_name: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``helo_name`` is the fallback for ``settings.helo_name`` (``listener.server_name``);
        ``ssl_context`` replaces the one built from the settings (tests). Raises ValueError
        when ``ca_file`` cannot be loaded."""
        self.name = settings.name
        self.settings = settings
        self.inflight = 0
        self.delivered = 0
        self.failed = 0
        self.connections = {"tls": 0, "plain": 0}
        self._limiter = trio.CapacityLimiter(settings.max_inflight)
        self._idle: list[SmtpClientSession] = []  # most recently used last
        self._closed = False
        self._timeout = settings.timeout_seconds
        self._suspension = ""  # why connections are suspended (see _suspend); "" when not
        self._suspended_until = 0.0
        self._probing = False
        tls = _TLS_MODES[settings.tls]
        if tls != "none" and ssl_context is None:
            try:
                ssl_context = tls_client_context(
                    verify=settings.verify_certificates, ca_file=settings.ca_file
                )
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"relay {self.name}: cannot load ca_file {settings.ca_file!r}: {exc}"
                ) from exc
        if tls != "none" and not settings.verify_certificates:
            log.warning(
                "relay %s: verify_certificates = false: the TLS connection to %s is "
                "encrypted but anyone on the path can impersonate the server",
                self.name,
                settings.host,
            )
        self._options = SessionOptions(
            label=f"relay {self.name}",
            address=settings.host,
            port=settings.port,
            tls_server_name=settings.host,
            display=f"{settings.host}:{settings.port}",
            helo_name=settings.helo_name or helo_name,
            tls=tls,
            ssl_context=ssl_context,
            timeouts=Timeouts.scaled(settings.timeout_seconds),
            username=settings.username,
            password=settings.password.reveal(),
            # Only an explicit tls = "none" lets the password go in the clear.
            auth_without_tls=settings.tls == "none",
        )

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        """One delivery attempt over a pooled connection (see the module docstring)."""
        if (why := self._suspended()) is not None:  # not even waiting for a token
            self.failed += 1
            return DeliveryResult.all(request, "transient", why)
        async with self._limiter:
            self.inflight += 1
            try:
                result = await self._deliver(request)
            finally:
                self.inflight -= 1
        delivered, failed = count_outcomes(result)
        self.delivered += delivered
        self.failed += failed
        return result

    def _suspended(self) -> str | None:
        """Why deliveries fail fast right now, or None (see `_suspend`)."""
        if not self._suspension:
            return None
        if trio.current_time() < self._suspended_until:
            return f"relay {self.name}: delivery suspended after: {self._suspension}"
        if self._probing:
            return f"relay {self.name}: a trial connection is under way after: {self._suspension}"
        return None

    def _suspend(self, reason: str) -> None:
        """A connection timed out: for ``timeout_seconds`` fail the relay's deliveries fast,
        then let one trial connection through at a time until one works.

        Without this, every worker could sit in a hung upstream's timeout at once and no
        other route delivered meanwhile (found by tests/system/test_reliability_upstreams.py).
        A refused connection costs nothing and suspends nothing.
        """
        if not self._suspension:
            log.warning("relay %s: suspended for %g s: %s", self.name, self._timeout, reason)
        self._suspension = reason
        self._suspended_until = trio.current_time() + self._timeout

    async def _deliver(self, request: DeliveryRequest) -> DeliveryResult:
        if (why := self._suspended()) is not None:
            return DeliveryResult.all(request, "transient", why)
        probe = bool(self._suspension)
        self._probing = self._probing or probe
        try:
            session = await self._session()
        except SessionError as exc:
            log.info("%s", exc.text)
            if exc.outcome == "transient" and "timed out" in exc.detail:
                self._suspend(exc.text)
            return DeliveryResult.all(request, exc.outcome, exc.text)
        finally:
            if probe:
                self._probing = False
        if self._suspension:
            log.info("relay %s: connected again; suspension lifted", self.name)
            self._suspension = ""
        sent = await self._send(session, request)
        if not sent.answered and not session.checked_at_reuse:
            # A connection reused without RSET was dead: nothing of the message went out
            # (see TransactionResult.answered), so it is safe to try once more on another.
            log.info("relay %s: a reused connection did not answer; trying another", self.name)
            try:
                session = await self._session(check=True)
            except SessionError as exc:
                return DeliveryResult.all(request, exc.outcome, exc.text)
            sent = await self._send(session, request)
        return sent.delivery_result()

    async def _send(
        self, session: SmtpClientSession, request: DeliveryRequest
    ) -> TransactionResult:
        """One transaction on ``session``, which then goes back to the pool or is closed."""
        done = False
        try:
            sent = await session.send(
                request.mail_from,
                request.recipients,
                request.message_path,
                request.size,
                smtputf8=request.smtputf8,
            )
            done = True
        finally:
            if not done:  # cancelled, or a bug: the dialogue is in an unknown state
                await session.abort()
        await self._release(session)
        return sent

    async def _session(self, *, check: bool = False) -> SmtpClientSession:
        """An idle connection, else a new one (`SessionError` if that fails).

        A connection whose last transaction ended with the reply to its data less than
        ``FRESH_SECONDS`` ago is reused as it is (unless ``check``); any other must answer
        RSET first, which proves the server has not dropped it meanwhile.
        """
        await self._close_expired()
        now = trio.current_time()
        while self._idle:
            session = self._idle.pop()  # the most recently used: the likeliest to be alive
            fresh = session.ended_cleanly and now - session.idle_since < FRESH_SECONDS
            session.checked_at_reuse = check or not fresh
            if not session.checked_at_reuse:
                return session
            try:
                reset = await session.reset()
            except BaseException:  # cancelled: the RSET may be half-way
                await session.abort()
                raise
            if reset:
                return session
            await session.abort()
            log.info("relay %s: a pooled connection did not answer RSET; not reused", self.name)
        session = await SmtpClientSession.connect(self._options)
        self.connections[session.transport] += 1
        return session

    async def _close_expired(self) -> None:
        """QUIT connections idle for longer than ``IDLE_SECONDS`` (there is no background
        task: this runs at each delivery, and `aclose` closes the rest)."""
        now = trio.current_time()
        expired = [s for s in self._idle if now - s.idle_since > IDLE_SECONDS]
        if not expired:
            return
        self._idle = [s for s in self._idle if s not in expired]
        async with trio.open_nursery() as nursery:
            for session in expired:
                nursery.start_soon(session.aclose)

    async def _release(self, session: SmtpClientSession) -> None:
        if session.usable and not self._closed:
            session.idle_since = trio.current_time()
            self._idle.append(session)
        else:
            await session.aclose()

    async def aclose(self) -> None:
        """QUIT every idle connection (each bounded) and stop pooling. Idempotent."""
        self._closed = True
        idle, self._idle = self._idle, []
        async with trio.open_nursery() as nursery:
            for session in idle:
                nursery.start_soon(session.aclose)
