"""The relay clients of the running configuration, rebuilt when a reload changes ``relays``.

Relays are live keys (SPEC §2): after a SIGHUP the next delivery attempt uses clients built
from the new settings. Clients of the old configuration are closed once their last
in-flight delivery is over; their pooled connections are never reused for the new settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import assert_never

from dispatch.config.settings import (
    LocalRelay,
    MailgunRelay,
    MxRelay,
    PostmarkRelay,
    RelaySettings,
    SesRelay,
    Settings,
    SmtpRelay,
)
from dispatch.monitoring.stats import Stats
from dispatch.relays.base import CaptureSink, DeliveryRequest, DeliveryResult, Relay
from dispatch.relays.dkim_sign import DkimSigner
from dispatch.relays.local import LocalRelayClient
from dispatch.relays.mailgun import MailgunRelayClient
from dispatch.relays.mx import MxRelayClient
from dispatch.relays.mx_security import OutboundState
from dispatch.relays.postmark import PostmarkRelayClient
from dispatch.relays.ratelimit import RateLimitedRelay
from dispatch.relays.ses import SesRelayClient
from dispatch.relays.smarthost import SmtpRelayClient
from dispatch.relays.suspension import AuditSink, Suspension, no_audit

log = logging.getLogger("dispatch.delivery")


class RelayUnavailable(Exception):
    """A relay name that is not configured."""


def build_relay(
    settings: RelaySettings,
    capture: CaptureSink,
    helo_name: str,
    audit: AuditSink = no_audit,
    signer: DkimSigner | None = None,
    outbound: OutboundState | None = None,
) -> Relay:
    """A client for one configured relay. Raises ValueError for settings that cannot work
    (an unreadable ``ca_file``, missing provider credentials).
    ``audit`` takes the relay's audit entries (an ``smtp`` relay's suspensions); ``signer``
    DKIM-signs for ``smtp`` and ``mx`` relays with ``dkim_sign`` on (providers sign
    themselves, local copies are not signed); ``outbound`` gives SMTP relays their TLS
    counters and ``mx`` relays the MTA-STS cache and security levels (None: their own)."""
    if isinstance(settings, LocalRelay):
        return LocalRelayClient(settings.name, capture)
    if isinstance(settings, SmtpRelay):
        tls_count = None if outbound is None else outbound.stats.smtp_out_tls
        return SmtpRelayClient(settings, helo_name, audit=audit, signer=signer, tls_count=tls_count)
    if isinstance(settings, MxRelay):
        if outbound is None:
            return MxRelayClient(settings, helo_name, signer=signer)
        return MxRelayClient(
            settings,
            helo_name,
            signer=signer,
            stats=outbound.stats,
            levels=outbound.levels,
            state_dir=outbound.state_dir,
        )
    if isinstance(settings, MailgunRelay):
        return MailgunRelayClient(settings)
    if isinstance(settings, SesRelay):
        return SesRelayClient(settings)
    if isinstance(settings, PostmarkRelay):
        return PostmarkRelayClient(settings)
    assert_never(settings)  # every kind SPEC §6 names has a client


def suspension_of(relay: Relay) -> Suspension | None:
    """The suspension state of ``relay``, or None for a kind that never suspends. Only
    ``smtp`` relays suspend (`dispatch.relays.suspension`), rate-limited or not."""
    if isinstance(relay, RateLimitedRelay):
        relay = relay.relay
    if isinstance(relay, SmtpRelayClient):
        return relay.suspension
    return None


def suspended_because(relay: Relay) -> str | None:
    """Why ``relay``'s deliveries are suspended now (its upstream hung), or None."""
    suspension = suspension_of(relay)
    return None if suspension is None else suspension.reason


class BrokenRelay:
    """Stands in for a relay that cannot be built: every attempt fails transiently with the
    reason, so mail waits (and says why) until the configuration is fixed and reloaded."""

    def __init__(self, name: str, kind: str, reason: str) -> None:
        self.name = name
        self.kind = kind
        self.reason = reason
        self.inflight = 0
        self.delivered = 0
        self.failed = 0

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        self.failed += 1
        return DeliveryResult.all(request, "transient", self.reason)

    async def aclose(self) -> None:
        return None


def _build_or_explain(
    settings: RelaySettings,
    capture: CaptureSink,
    helo_name: str,
    audit: AuditSink,
    signer: DkimSigner | None,
    outbound: OutboundState | None = None,
) -> Relay:
    try:
        relay = build_relay(settings, capture, helo_name, audit, signer, outbound)
    except (RelayUnavailable, ValueError) as exc:
        log.error("relay %s cannot deliver: %s", settings.name, exc)
        return BrokenRelay(settings.name, settings.kind, str(exc))
    if settings.rate_limit_per_minute:
        return RateLimitedRelay(relay, settings.rate_limit_per_minute)
    return relay


class RelaySet:
    """Owns the relay clients; :meth:`get` always answers from the current configuration."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        capture: CaptureSink,
        *,
        audit: AuditSink = no_audit,
        signer: DkimSigner | None = None,
        stats: Stats | None = None,
    ) -> None:
        """``audit`` takes the relays' audit entries (``store.log.audit`` in the daemon);
        ``signer`` holds the ``[[dkim]]`` keys (None: nothing is signed); ``stats`` gets the
        outbound TLS, MTA-STS and security level counters (`OutboundState`, made at the first
        build from ``data_dir``)."""
        self._settings = settings
        self._stats = stats or Stats()
        self._outbound: OutboundState | None = None
        self._signer = signer
        self._capture = capture  # the local relay's copies (the spool, in the daemon)
        self._audit = audit
        self._built_from: tuple[RelaySettings, ...] | None = None
        self._relays: dict[str, Relay] = {}
        self._retired: list[Relay] = []

    def _refresh(self) -> None:
        current = self._settings()
        if current.relays == self._built_from:
            return
        helo_name = current.listener.server_name
        if self._outbound is None:  # data_dir is not live: made once, kept across reloads
            self._outbound = OutboundState.under(Path(current.data_dir), self._stats)
        fresh = {
            relay.name: _build_or_explain(
                relay, self._capture, helo_name, self._audit, self._signer, self._outbound
            )
            for relay in current.relays
        }
        self._retired.extend(self._relays.values())
        self._relays, self._built_from = fresh, current.relays
        log.info("relays configured: %s", ", ".join(f"{r.name} ({r.kind})" for r in fresh.values()))

    def get(self, name: str) -> Relay:
        self._refresh()
        try:
            return self._relays[name]
        except KeyError:
            raise RelayUnavailable(f"relay {name!r} is not configured") from None

    def all(self) -> list[Relay]:
        self._refresh()
        return list(self._relays.values())

    def suspensions(self) -> dict[str, str | None]:
        """Every configured relay by name, with why it is suspended (None: it is not)."""
        return {relay.name: suspended_because(relay) for relay in self.all()}

    async def close_retired(self) -> None:
        """Close clients of earlier configurations (their idle pooled connections)."""
        retired, self._retired = self._retired, []
        for relay in retired:
            await relay.aclose()

    async def aclose(self) -> None:
        await self.close_retired()
        for relay in self._relays.values():
            await relay.aclose()
        self._relays, self._built_from = {}, None
