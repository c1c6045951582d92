"""The ``smtp`` relay: a smarthost reached with Dispatch's own SMTP client, connections reused.

Theory of operation: each :meth:`SmtpRelayClient.deliver` borrows one of ``max_inflight``
tokens of a :class:`trio.CapacityLimiter`, takes a connection from the relay's
:class:`ConnectionPool` (an idle one, checked with RSET unless it has just finished a
transaction, or a new one: see `dispatch.relays.smtp_pool`), runs one transaction on it and
gives it back. If a connection reused without RSET turns out dead — not one reply to the
transaction's commands — the transaction is run once more on another: the message only goes
after a 354, so the dead one cannot have taken it and this costs no duplicate. The pool never
holds more connections than ``max_inflight``: one is only opened by a delivery holding a
token, when none is idle.

Suspension (`dispatch.relays.suspension`): a connection that times out marks the upstream as
hung; its deliveries then fail fast for ``timeout_seconds``, then one trial connection at a
time goes through until one works. Both ends are written to the audit log.

Ownership and stopping: the relay owns its pool. :meth:`SmtpRelayClient.aclose` QUITs the
idle connections (bounded) and stops pooling; deliveries still running then close their
connection when done. Cancelling a delivery drops its connection without QUIT (a half-sent
message must never be completed) and never pools it.

Outcome mapping (see `dispatch.relays.base`): connection, TLS and timeout failures make every
recipient ``transient``, with a text naming the relay and what failed; each RCPT reply decides
its recipient (5xx ``permanent``, 4xx ``transient``); the reply after the data decides every
accepted recipient. Refusing to send a password without TLS is ``permanent``.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

import attrs
import trio

from dispatch.config.settings import SmtpRelay
from dispatch.monitoring.stats import CounterMap
from dispatch.monitoring.traces import Trace
from dispatch.relays.base import DeliveryRequest, DeliveryResult, dialogue_trace
from dispatch.relays.dkim_sign import DkimSigner
from dispatch.relays.smtp_options import SessionError, SessionOptions, Timeouts, TlsMode
from dispatch.relays.smtp_pool import ConnectionPool
from dispatch.relays.smtp_session import SmtpClientSession
from dispatch.relays.smtp_transaction import TransactionResult
from dispatch.relays.suspension import AuditSink, Suspension, no_audit

__all__ = ["SmtpRelayClient", "count_outcomes", "tls_client_context"]

log = logging.getLogger("dispatch.relays.smarthost")

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
    "tls" or "plain"), ``idle_connections``.
    """

    kind: str = "smtp"

    def __init__(
        self,
        settings: SmtpRelay,
        helo_name: str,
        *,
        audit: AuditSink = no_audit,
        ssl_context: ssl.SSLContext | None = None,
        signer: DkimSigner | None = None,
        tls_count: CounterMap | None = None,
    ) -> None:
        """``tls_count`` counts each connection's TLS status (``dispatch/smtpOut/tlsCount``).
        ``helo_name`` is the fallback for ``settings.helo_name`` (``listener.server_name``);
        ``audit`` takes the audit entries of suspensions (`no_audit` keeps none);
        ``ssl_context`` replaces the one built from the settings (tests). Raises ValueError
        when ``ca_file`` cannot be loaded."""
        self.name = settings.name
        self.settings = settings
        self.inflight = 0
        self.delivered = 0
        self.failed = 0
        self._limiter = trio.CapacityLimiter(settings.max_inflight)
        self._suspension = Suspension(settings.name, settings.timeout_seconds, audit)
        # DKIM: before connecting, once per message (dispatch/relays/dkim_sign.py).
        self._signer = signer if settings.dkim_sign else None
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
        self._pool = ConnectionPool(
            SessionOptions(
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
                tls_count=tls_count,
            )
        )

    @property
    def connections(self) -> dict[str, int]:
        return self._pool.connections

    @property
    def idle_connections(self) -> int:
        return len(self._pool)

    @property
    def suspension(self) -> Suspension:
        """Whether deliveries fail fast now, and why (read by ``/health``)."""
        return self._suspension

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        """One delivery attempt over a pooled connection (see the module docstring)."""
        if (why := self._suspension.why_blocked()) is not None:  # not even waiting for a token
            self.failed += 1
            return DeliveryResult.all(request, "transient", why)
        if self._signer is not None:
            prefix = await self._signer.signature(request, f"relay {self.name}")
            request = attrs.evolve(request, prefix=prefix)
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

    async def _deliver(self, request: DeliveryRequest) -> DeliveryResult:
        if (why := self._suspension.why_blocked()) is not None:
            return DeliveryResult.all(request, "transient", why)
        title = f"relay {self.name} → {self._pool.options.display}"
        with dialogue_trace(request, title) as dialogue:
            return await self._converse(request, dialogue)

    async def _converse(self, request: DeliveryRequest, dialogue: Trace | None) -> DeliveryResult:
        """Lease a connection (traced to ``dialogue``), send, and retry once on a dead one."""
        try:
            with self._suspension.attempt():
                lease = await self._pool.take(trace=dialogue)
        except SessionError as exc:
            log.debug("%s", exc.text)  # the attempt's outcome line says it at info
            self._suspension.failed(exc)
            return DeliveryResult.all(request, exc.outcome, exc.text)
        self._suspension.connected()
        sent = await self._send(lease.session, request)
        if not sent.answered and not lease.checked:
            # A connection reused without RSET was dead: nothing of the message went out
            # (see TransactionResult.answered), so it is safe to try once more on another.
            log.info("relay %s: a reused connection did not answer; trying another", self.name)
            try:
                lease = await self._pool.take(check=True, trace=dialogue)
            except SessionError as exc:
                return DeliveryResult.all(request, exc.outcome, exc.text)
            sent = await self._send(lease.session, request)
        return sent.delivery_result()

    async def _send(
        self, session: SmtpClientSession, request: DeliveryRequest
    ) -> TransactionResult:
        """One transaction on ``session``, which then goes back to the pool (or is closed)."""
        done = False
        try:
            sent = await session.send(
                request.mail_from,
                request.recipients,
                request.message_path,
                request.size,
                smtputf8=request.smtputf8,
                mail_dsn=request.mail_dsn,
                recipient_dsn=request.recipient_dsn,
                prefix=request.prefix,
                content=request.content,
            )
            done = True
        finally:
            if not done:  # cancelled, or a bug: the dialogue is in an unknown state
                await session.abort()
        await self._pool.give_back(session, ended_cleanly=sent.ended_cleanly)
        return sent

    async def aclose(self) -> None:
        """QUIT every idle connection (each bounded) and stop pooling. Idempotent."""
        await self._pool.aclose()
