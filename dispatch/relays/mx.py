"""The ``mx`` relay: direct delivery to each recipient domain's mail exchangers.

Theory of operation (RFC 5321 §5.1): the recipients are grouped by domain (the part after
the last "@", lower-cased, IDNA-encoded for DNS) and the domains are delivered to
concurrently. For each domain the MX records are looked up with dnspython's async resolver
(Trio-native) and ordered by preference, equal preferences in random order; a domain without
MX records is its own exchanger (the implicit MX); a null MX (RFC 7505) or a domain that does
not exist fails permanently. The exchangers are tried in order, each of their A then AAAA
addresses in turn, until one accepts a connection and answers the transaction: connection,
greeting, EHLO and TLS failures move on to the next address; once a transaction has started
its replies are final for this attempt. DNS timeouts and server failures are transient.

TLS is opportunistic (RFC 7435): STARTTLS when offered; a certificate that does not verify
is still used (as most MTAs do between each other), and if the handshake fails the same
address is tried once more in plaintext. What a domain's delivery must meet — its MTA-STS
policy (RFC 8461), the best security level it was seen with, ``require_tls = true`` (verified
TLS) — is `dispatch.relays.mx_security`'s: an exchanger that cannot meet it is skipped,
transiently.

Ownership and stopping: with ``nameservers`` set, exactly those are asked (on
``nameserver_port``), never the system resolver. Connections are not pooled: each domain's
delivery opens one, QUITs it and closes it, so :meth:`MxRelayClient.aclose` has nothing to
close. Cancelling a delivery drops its connections without QUIT.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import attrs
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.resolver
import trio

from dispatch.config.settings import MxRelay
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Trace
from dispatch.relays.base import (
    DeliveryRequest,
    DeliveryResult,
    Outcome,
    RecipientOutcome,
    dialogue_trace,
)
from dispatch.relays.dkim_sign import DkimSigner
from dispatch.relays.mx_security import DomainPlan, OutboundGuard
from dispatch.relays.security_levels import DomainLevels
from dispatch.relays.smarthost import count_outcomes
from dispatch.relays.smtp_options import SessionError, SessionOptions, Timeouts
from dispatch.relays.smtp_session import SmtpClientSession
from dispatch.relays.smtp_transaction import TransactionResult

__all__ = ["MxRelayClient", "order_exchangers"]

log = logging.getLogger("dispatch.relays.mx")

# A DNS answer slower than this is not coming (dnspython retries within it).
DNS_LIFETIME_CAP: Final = 30.0
# RFC 5321 §5.1 asks clients to bound their attempts; a domain with more addresses than this
# is retried later rather than keeping a worker for many connection timeouts.
MAX_ADDRESSES: Final = 10


class _DomainFailure(Exception):
    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome: Outcome = outcome
        self.detail = detail


def order_exchangers(records: Iterable[tuple[int, str]], rng: random.Random) -> list[str]:
    """Exchanger names by preference, lowest first; equal preferences shuffled so that load
    spreads over them (RFC 5321 §5.1)."""
    return [host for _, _, host in sorted((pref, rng.random(), host) for pref, host in records)]


def _domain_of(recipient: str) -> str:
    return recipient.rpartition("@")[2].lower() if "@" in recipient else ""


class MxRelayClient:
    """A configured ``kind = "mx"`` relay (implements `dispatch.relays.base.Relay`).

    Counters, plain ints: ``inflight`` (domain deliveries running now, each holding one of
    ``max_inflight`` tokens), ``delivered`` and ``failed`` (attempts, as in
    `dispatch.relays.smarthost.count_outcomes`), ``connections`` (by "tls" or "plain").
    """

    kind: str = "mx"

    def __init__(
        self,
        settings: MxRelay,
        helo_name: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
        signer: DkimSigner | None = None,
        stats: Stats | None = None,
        levels: DomainLevels | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """``helo_name`` is the fallback for ``settings.helo_name``; ``ssl_context`` verifies
        certificates instead of the system store or ``ca_file`` (tests); ``rng`` orders equal
        preferences. Outbound security (`dispatch.relays.mx_security`): ``stats`` gets the
        TLS, MTA-STS and security level counters, ``levels`` is the shared store of levels
        seen (None: one of its own in ``state_dir``), ``state_dir`` (``data_dir``) keeps the
        MTA-STS cache and the levels (None: memory only)."""
        self.name = settings.name
        self.settings = settings
        self.inflight = 0
        self.delivered = 0
        self.failed = 0
        self.connections = {"tls": 0, "plain": 0}
        self._label = f"relay {self.name}"
        self._helo_name = settings.helo_name or helo_name
        self._limiter = trio.CapacityLimiter(settings.max_inflight)
        self._rng = rng or random.Random()
        self._timeouts = Timeouts.scaled(settings.timeout_seconds)
        # DKIM: once per message, for every domain and exchanger (dispatch/relays/dkim_sign.py).
        self._signer = signer if settings.dkim_sign else None
        self._stats = stats or Stats()
        if settings.nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = list(settings.nameservers)
            self._resolver.port = settings.nameserver_port
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()  # the system's resolv.conf
            except dns.exception.DNSException as exc:
                raise ValueError(
                    f"relay {self.name}: cannot read the system resolver configuration "
                    f"({exc}); set nameservers"
                ) from exc
        self._resolver.lifetime = min(settings.timeout_seconds, DNS_LIFETIME_CAP)
        if levels is None:
            levels = DomainLevels(None if state_dir is None else state_dir / "domaininfo")
        self._guard = OutboundGuard(
            settings,
            label=self._label,
            resolver=self._resolver,
            stats=self._stats,
            levels=levels,
            state_dir=state_dir,
            ssl_context=ssl_context,
        )

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        """Deliver to every recipient domain at once; outcomes in the request's order."""
        if self._signer is not None:
            prefix = await self._signer.signature(request, self._label)
            request = attrs.evolve(request, prefix=prefix)
        groups: dict[str, list[int]] = {}
        for i, recipient in enumerate(request.recipients):
            groups.setdefault(_domain_of(recipient), []).append(i)
        outcomes: list[RecipientOutcome | None] = [None] * len(request.recipients)
        remote_ids: list[str] = []

        async def one_domain(domain: str, indices: list[int]) -> None:
            recipients = [request.recipients[i] for i in indices]
            async with self._limiter:
                self.inflight += 1
                try:
                    sent = await self._deliver_domain(request, domain, recipients)
                finally:
                    self.inflight -= 1
            for i, outcome in zip(indices, sent.outcomes, strict=True):
                outcomes[i] = outcome
            if sent.remote_id:
                remote_ids.append(sent.remote_id)

        async with trio.open_nursery() as nursery:
            for domain, indices in groups.items():
                nursery.start_soon(one_domain, domain, indices)
        result = DeliveryResult(
            tuple(o for o in outcomes if o is not None), ", ".join(remote_ids) or None
        )
        delivered, failed = count_outcomes(result)
        self.delivered += delivered
        self.failed += failed
        return result

    async def aclose(self) -> None:
        """Nothing is pooled; idempotent."""

    # --- one domain ------------------------------------------------------------------------

    async def _deliver_domain(
        self, request: DeliveryRequest, domain: str, recipients: Sequence[str]
    ) -> TransactionResult:
        """One domain's delivery, traced as one dialogue (the lookups, every address tried)."""
        with dialogue_trace(request, f"{self._label} → {domain}") as dialogue:
            result = await self._to_exchangers(request, domain, recipients, dialogue)
            if dialogue is not None and result.final_reply is None:
                dialogue.error(result.outcomes[0].response)  # ended before the data's reply
            return result

    async def _to_exchangers(
        self,
        request: DeliveryRequest,
        domain: str,
        recipients: Sequence[str],
        dialogue: Trace | None,
    ) -> TransactionResult:
        try:
            hosts, implicit = await self._exchangers(domain)
        except _DomainFailure as exc:
            log.info("%s: %s", self._label, exc.detail)
            return TransactionResult.all(recipients, exc.outcome, f"{self._label}: {exc.detail}")
        if dialogue is not None:
            shown = ", ".join(hosts) + (" (no MX: the domain itself)" if implicit else "")
            dialogue.event(f"exchangers of {domain}: {shown}")
        plan = await self._guard.plan(_host_text(dns.name.from_text(domain)), hosts, dialogue)
        if plan.refusal is not None:
            log.warning("%s: %s", self._label, plan.refusal)
            return TransactionResult.all(recipients, "transient", f"{self._label}: {plan.refusal}")
        errors: list[str] = []
        tried = 0
        for host in plan.hosts:
            if tried >= MAX_ADDRESSES:
                break
            try:
                addresses = await self._addresses(host)
            except _DomainFailure as exc:
                errors.append(exc.detail)
                continue
            if not addresses:
                if implicit:  # RFC 5321 §5.1: no MX and no address: nowhere to deliver
                    return TransactionResult.all(
                        recipients,
                        "permanent",
                        f"{self._label}: {domain} has no MX and no address records",
                    )
                errors.append(f"{host} has no address records")
                continue
            for address in addresses:
                if tried >= MAX_ADDRESSES:
                    break
                tried += 1
                try:
                    session = await self._guard.connect(
                        self._options(host, address), plan, dialogue
                    )
                except SessionError as exc:
                    log.debug("%s", exc.text)  # the outcome line lists every address's error
                    errors.append(exc.detail)
                    continue
                if (refusal := await self._admit(session, host, plan)) is not None:
                    errors.append(refusal)
                    continue
                self.connections[session.transport] += 1
                return await self._send(session, request, recipients)
        reasons = "; ".join(errors) or "no exchanger tried"
        return TransactionResult.all(
            recipients,
            "transient",
            f"{self._label}: no mail exchanger of {domain} took the message: {reasons}",
        )

    async def _admit(self, session: SmtpClientSession, host: str, plan: DomainPlan) -> str | None:
        """The outbound security checks of an open session; a refused one is closed."""
        try:
            refusal = await self._guard.admit(session, host, plan)
        except BaseException:
            await session.abort()
            raise
        if refusal is not None:
            log.warning("%s: %s", self._label, refusal)
            await session.aclose()
        return refusal

    async def _send(
        self, session: SmtpClientSession, request: DeliveryRequest, recipients: Sequence[str]
    ) -> TransactionResult:
        try:
            sent = await session.send(
                request.mail_from,
                recipients,
                request.message_path,
                request.size,
                smtputf8=request.smtputf8,
                mail_dsn=request.mail_dsn,
                recipient_dsn=request.recipient_dsn,
                prefix=request.prefix,
                content=request.content,
            )
        except BaseException:  # cancelled, or a bug: never finish a half-sent message
            await session.abort()
            raise
        await session.aclose()
        return sent

    def _options(self, host: str, address: str) -> SessionOptions:
        port = self.settings.port
        return SessionOptions(
            label=self._label,
            address=address,
            port=port,
            tls_server_name=host,
            display=f"{host}[{address}]:{port}",
            helo_name=self._helo_name,
            tls="opportunistic",  # OutboundGuard.connect sets the mode and context
            ssl_context=None,
            timeouts=self._timeouts,
            tls_count=self._stats.smtp_out_tls,
        )

    # --- DNS -------------------------------------------------------------------------------

    async def _exchangers(self, domain: str) -> tuple[list[str], bool]:
        """The exchangers to try, in order, and whether they are the implicit MX."""
        if not domain:
            raise _DomainFailure("permanent", "the recipient address has no domain")
        try:
            name = dns.name.from_text(domain)  # IDNA-encodes a non-ASCII domain
        except dns.exception.DNSException as exc:
            raise _DomainFailure("permanent", f"invalid domain {domain!r}: {exc}") from None
        try:
            answer = await self._resolver.resolve(name, dns.rdatatype.MX)
        except dns.resolver.NXDOMAIN:
            raise _DomainFailure("permanent", f"domain {domain} does not exist") from None
        except dns.resolver.NoAnswer:
            # RFC 5321 §5.1: no MX records: the domain itself is the exchanger.
            return [_host_text(name)], True
        except dns.exception.DNSException as exc:
            raise _DomainFailure("transient", f"MX lookup for {domain} failed: {exc}") from None
        records = [
            (rdata.preference, rdata.exchange)
            for rdata in answer
            if isinstance(rdata, dns.rdtypes.ANY.MX.MX)
        ]
        usable = [(pref, _host_text(host)) for pref, host in records if host != dns.name.root]
        if not usable:
            # RFC 7505 §3: "0 ." says the domain accepts no mail at all (556 5.1.10).
            raise _DomainFailure(
                "permanent", f"{domain} accepts no mail (null MX, RFC 7505)"
            ) from None
        return order_exchangers(usable, self._rng), False

    async def _addresses(self, host: str) -> list[str]:
        """A then AAAA addresses of an exchanger; `_DomainFailure` only if DNS failed."""
        addresses: list[str] = []
        failures: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._resolver.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                failures.append(f"{dns.rdatatype.to_text(rdtype)} lookup for {host} failed: {exc}")
                continue
            addresses.extend(rdata.to_text() for rdata in answer)
        if not addresses and failures:
            raise _DomainFailure("transient", "; ".join(failures))
        return addresses


def _host_text(name: dns.name.Name) -> str:
    """The name as an absolute query name would be written in SMTP: A-labels, no final dot."""
    return name.to_text(omit_final_dot=True).lower()
