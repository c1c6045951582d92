"""What the dashboard reads and acts on: :class:`DashboardSources`, built once by the
composition root (``dispatch/daemon.py``, ``dashboard_sources``) from the daemon's parts.

The pages get the long-lived objects themselves (the store, the spool, the relay set, ...)
rather than one callable per figure: a page module takes what it needs from here and nothing
else. The dashboard sits above ``web`` in the layers (``pyproject.toml``), so it may import
every room below it; it never imports ``daemon`` or ``supervisor``.

``logins`` (the throttle of failed logins) lives here, not in the app, so that it outlives a
restart of the "webui" component: a crash does not forgive an attacker's guesses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from dispatch.config.live import LiveSettings
from dispatch.delivery.attempt import DeliveryAttempt
from dispatch.intake.service import SmtpIntake
from dispatch.monitoring.health import HealthSources
from dispatch.monitoring.metrics import DatabaseFigures
from dispatch.monitoring.queue_history import QueueHistory
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Tracer
from dispatch.relays.registry import RelaySet
from dispatch.retention import Retention
from dispatch.security.api_keys import ApiKeyVerifier
from dispatch.security.throttle import FailureThrottle
from dispatch.spool import Spool
from dispatch.storage import AuditEntry, Store
from dispatch.web.debug import DebugSources

LOGIN_FAILURES: int = 5
"""Wrong passwords one address may give per :data:`LOGIN_WINDOW_SECONDS`."""
LOGIN_WINDOW_SECONDS: float = 300.0


def login_throttle() -> FailureThrottle:
    """The per-address throttle of failed dashboard logins (SPEC §11)."""
    return FailureThrottle(max_failures=LOGIN_FAILURES, window=LOGIN_WINDOW_SECONDS)


@attrs.frozen
class DashboardSources:
    """The daemon's objects the dashboard pages read and act on. Owns only ``logins``.

    ``audit`` is the store's ``MessageLog.audit`` (never blocks; journaled while the
    database is down). ``health`` is what ``/health`` reads, for the Overview's summary.
    """

    settings: LiveSettings
    store: Store
    spool: Spool
    stats: Stats
    tracer: Tracer
    relays: RelaySet
    attempt: DeliveryAttempt
    intake: SmtpIntake
    figures: DatabaseFigures
    health: HealthSources
    audit: Callable[[AuditEntry], None]
    logins: FailureThrottle = attrs.field(factory=login_throttle)
    queue_history: QueueHistory = attrs.field(factory=QueueHistory)
    """The spool's depth sampled every minute (the Overview's chart; the "figures" component
    samples it)."""
    stopping: trio.Event = attrs.field(factory=trio.Event)
    """Set when the daemon begins to stop: live streams (the Overview's events) end then,
    so an open browser never holds the port's shutdown."""
    flush: Callable[[str | None, str | None, str], Awaitable[dict[str, Any]]] | None = None
    """``spool retry --all`` (the control room's ``spool_flush`` on the current settings):
    ``flush(relay, state, who)``; None when not wired (the Spool page then hides it)."""
    # The API's key verifier (create and revoke go through it: audited, its cache emptied),
    # the retention component's object ("purge now"), and what /debug/ reads on this port.
    verifier: ApiKeyVerifier | None = None
    retention: Retention | None = None
    debug: DebugSources | None = None
