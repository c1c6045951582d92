"""Outbound security of the ``mx`` relay: MTA-STS and the no-downgrade security levels.

Theory of operation: before a domain's exchangers are tried, :meth:`OutboundGuard.plan` finds
what the delivery must meet (:class:`DomainPlan`):

- the domain's MTA-STS policy (RFC 8461, `dispatch.relays.sts_cache`). In ``enforce`` mode
  only exchangers matching the policy's ``mx`` patterns are tried (§4.1; none matching defers
  the delivery) and each must offer STARTTLS with a certificate valid for its name (§4.2),
  else it is skipped and, if no other takes the mail, the delivery is deferred. In
  ``testing`` mode the mail goes as without a policy and each failure is counted and logged
  (``dispatch/smtpOut/sts/security`` fail); no TLSRPT report (RFC 8460) is sent. ``none`` is
  no policy;
- the best security level seen for the domain (`dispatch.relays.security_levels`): a
  connection may not be worse (chasquid's security level checks);
- the relay's ``require_tls``: verified TLS.

The strictest of these is the plan's ``minimum``; :meth:`OutboundGuard.connect` then opens the
session accordingly. The certificate is always checked first (against the system store or
``ca_file``) so that the level of a connection is known; when it does not verify and the
minimum allows it, the same address is tried again without verification (a second TCP
connection: Python's ``ssl`` cannot verify after an unverified handshake); when the handshake
fails outright and plaintext is allowed, once more without TLS (RFC 7435 §6.2).
:meth:`OutboundGuard.admit` checks the open session, counts and records the level.

Failures here are transient: an attacker or a misconfiguration may be gone by the next
attempt, and the message waits in the spool with the reason (as chasquid does).

Ownership: one guard per ``mx`` relay client; the levels store is shared by the relay set.
Nothing to close.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

import attrs
import dns.asyncresolver

from dispatch.config.settings import MxRelay
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Trace
from dispatch.relays.security_levels import DomainLevels, SecurityLevel
from dispatch.relays.smtp_options import SessionError, SessionOptions
from dispatch.relays.smtp_session import SmtpClientSession
from dispatch.relays.sts_cache import StsPolicies
from dispatch.relays.sts_policy import Policy

__all__ = ["DomainPlan", "OutboundGuard", "OutboundState", "level_of"]

log = logging.getLogger("dispatch.relays.mx")


def level_of(session: SmtpClientSession) -> SecurityLevel:
    if session.tls_verified:
        return SecurityLevel.TLS_VERIFIED
    return SecurityLevel.TLS_UNVERIFIED if session.tls_active else SecurityLevel.PLAIN


@attrs.frozen
class DomainPlan:
    """What every connection for one domain's delivery must meet.

    ``hosts``: the exchangers to try (an enforced policy's non-matching ones removed);
    ``refusal``: set when none may be tried (the delivery is deferred with it);
    ``minimum``: the lowest acceptable :class:`SecurityLevel`, ``why`` says who asks for it.
    """

    domain: str
    hosts: tuple[str, ...]
    policy: Policy | None
    minimum: SecurityLevel
    why: str
    refusal: str | None = None
    from_levels: bool = False  # the minimum comes (also) from the level seen before


class OutboundGuard:
    """The MTA-STS cache, the level store and the TLS contexts of one ``mx`` relay."""

    def __init__(
        self,
        settings: MxRelay,
        *,
        label: str,
        resolver: dns.asyncresolver.Resolver,
        stats: Stats,
        levels: DomainLevels | None,
        state_dir: Path | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context`` verifies certificates (tests give their CA); by default the system
        store, or ``ca_file``. Raises ValueError naming the key if ``ca_file`` cannot be read."""
        self.label = label
        self.stats = stats
        self.require_tls = settings.require_tls
        if ssl_context is None:
            try:
                ssl_context = ssl.create_default_context(cafile=settings.ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"{label}: cannot load ca_file {settings.ca_file!r}: {exc}; fix the path "
                    'or set ca_file = "" for the system store'
                ) from exc
        self.verifying = ssl_context
        # RFC 7435 opportunistic security: encryption without authentication still beats
        # plaintext, and many exchangers' certificates would not verify.
        self.unverified = ssl.create_default_context()
        self.unverified.check_hostname = False
        self.unverified.verify_mode = ssl.CERT_NONE
        self.levels = levels if settings.security_levels else None
        self.sts: StsPolicies | None = None
        if settings.mta_sts:
            self.sts = StsPolicies(
                label=label,
                resolver=resolver,
                ssl_context=ssl_context,
                directory=None if state_dir is None else state_dir / "mta-sts",
                stats=stats,
                port=settings.mta_sts_port,
                timeout_seconds=settings.timeout_seconds,
            )

    async def plan(self, domain: str, hosts: Sequence[str], dialogue: Trace | None) -> DomainPlan:
        """What delivering to ``domain`` (A-labels) through ``hosts`` (its exchangers, in
        order) must meet; the policy and the level seen are looked up here (DNS, HTTPS,
        files), so a cancelled call leaves at most a policy fetched and cached."""
        policy = await self.sts.policy_for(domain) if self.sts is not None else None
        if policy is not None:
            self.stats.sts_mode.add(policy.mode)
            if dialogue is not None:
                dialogue.event(
                    f"MTA-STS policy of {domain}: mode {policy.mode}, mx {', '.join(policy.mx)}"
                )
            if policy.mode == "none":
                policy = None
        minimum, reasons = SecurityLevel.PLAIN, []
        if self.require_tls:
            minimum, reasons = SecurityLevel.TLS_VERIFIED, ["require_tls = true"]
        allowed = tuple(hosts)
        if policy is not None and policy.mode == "enforce":
            minimum = SecurityLevel.TLS_VERIFIED
            reasons.append("its MTA-STS policy is in enforce mode")
            allowed = tuple(host for host in hosts if policy.allows(host))
            skipped = [host for host in hosts if host not in allowed]
            if skipped:
                log.warning(
                    "%s: %s skipped: not in the MTA-STS policy of %s (mx: %s)",
                    self.label,
                    ", ".join(skipped),
                    domain,
                    ", ".join(policy.mx),
                )
            if not allowed:
                self.stats.sts_security.add("fail")
                refusal = (
                    f"no mail exchanger of {domain} ({', '.join(hosts)}) matches its MTA-STS "
                    f"policy (mx: {', '.join(policy.mx)}, mode enforce); the delivery waits "
                    "until the domain's MX records or policy are fixed"
                )
                return DomainPlan(domain, (), policy, minimum, "", refusal)
        from_levels = False
        if self.levels is not None:
            best = await self.levels.best(domain)
            if best > minimum:
                minimum = best
            if best > SecurityLevel.PLAIN and best >= minimum:
                from_levels = True
                reasons.append(f"it was seen with {best.text} before")
        return DomainPlan(
            domain, allowed, policy, minimum, "; ".join(reasons), from_levels=from_levels
        )

    async def connect(
        self, options: SessionOptions, plan: DomainPlan, dialogue: Trace | None
    ) -> SmtpClientSession:
        """Open a session that can meet ``plan.minimum`` (see the module docstring), or raise
        `SessionError`; a failure caused by the minimum says so and is counted."""
        minimum = plan.minimum
        options = attrs.evolve(
            options,
            tls="opportunistic" if minimum == SecurityLevel.PLAIN else "required",
            ssl_context=self.verifying,
        )
        try:
            return await SmtpClientSession.connect(options, dialogue)
        except SessionError as first:
            exc = first
        if exc.verify_failure and minimum <= SecurityLevel.TLS_UNVERIFIED:
            log.info("%s; trying %s again without verification", exc.text, options.display)
            options = attrs.evolve(options, ssl_context=self.unverified)
            try:
                return await SmtpClientSession.connect(options, dialogue)
            except SessionError as again:
                exc = again
        if not exc.tls_failure:
            raise exc
        if minimum > SecurityLevel.PLAIN:
            raise self._refused(plan, exc.detail)
        # RFC 7435 §6.2: opportunistic TLS must not make mail less deliverable than plaintext
        # would; a server whose TLS is broken gets the mail without it.
        log.info("%s: TLS with %s failed; trying again without TLS", self.label, options.display)
        return await SmtpClientSession.connect(attrs.evolve(options, tls="none"), dialogue)

    def _refused(self, plan: DomainPlan, detail: str) -> SessionError:
        """The minimum was not met: count it where it came from and say why."""
        if plan.policy is not None and plan.policy.mode == "enforce":
            self.stats.sts_security.add("fail")
        if plan.from_levels:
            self.stats.smtp_out_security_checks.add("fail")
        return SessionError(
            "transient",
            self.label,
            f"{detail} ({plan.domain} requires {plan.minimum.text}: {plan.why})",
        )

    async def admit(self, session: SmtpClientSession, host: str, plan: DomainPlan) -> str | None:
        """Check an open session against the plan: None if the mail may go, else why not
        (the caller closes the session and tries the next address). Records the level."""
        level = level_of(session)
        display = session.options.display
        if plan.policy is not None:
            ok = plan.policy.allows(host) and level == SecurityLevel.TLS_VERIFIED
            self.stats.sts_security.add("pass" if ok else "fail")
            if not ok and plan.policy.mode == "testing":
                log.warning(
                    "%s: %s would fail the MTA-STS policy of %s (%s, %s); mode testing: "
                    "delivering anyway",
                    self.label,
                    display,
                    plan.domain,
                    "listed" if plan.policy.allows(host) else "not listed",
                    level.text,
                )
        if level < plan.minimum:  # a bug upstream of here; never send below the minimum
            return f"{display} offers {level.text}; {plan.domain} requires {plan.minimum.text}"
        if self.levels is not None:
            best = await self.levels.best(plan.domain)
            if level < best:
                self.stats.smtp_out_security_checks.add("fail")
                return (
                    f"security level check failed: {display} offers {level.text} but "
                    f"{plan.domain} was seen with {best.text} before"
                )
            self.stats.smtp_out_security_checks.add("pass")
            await self.levels.record(plan.domain, level)
        return None


@attrs.frozen
class OutboundState:
    """What the outbound SMTP relays of one process share: the counters, the store of levels
    seen and ``data_dir`` (the MTA-STS cache is under it). Made once by the relay set, so a
    reload's new clients keep them."""

    stats: Stats
    levels: DomainLevels
    state_dir: Path | None

    @classmethod
    def under(cls, data_dir: Path | None, stats: Stats) -> OutboundState:
        """Levels in ``<data_dir>/domaininfo/``, policies in ``<data_dir>/mta-sts/``."""
        levels = DomainLevels(None if data_dir is None else data_dir / "domaininfo")
        return cls(stats, levels, data_dir)
