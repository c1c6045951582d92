"""What the Overview shows, gathered once for every viewer: :class:`OverviewFeed`.

A :class:`Snapshot` holds the Overview's figures: today's and the last five minutes' events
(the database's counter tables, :mod:`dispatch.storage.throughput`), the spool's state (its
in-memory index), each relay's state (in-flight count, today's delivered and failed, a
suspension with the time it ends), the health summary (:func:`check_health`, what
``/health`` answers) and the newest messages.

The page renders one snapshot; its event stream (``/overview/events``) sends a fresh one as
flat ``{key: text}`` values (:meth:`Snapshot.live_values`) whenever it changed. However many
browsers watch, the database is read at most once per :data:`FIGURES_SECONDS` and the
health checks (which touch the disk) run at most once per :data:`HEALTH_SECONDS`: the feed
keeps the last answers and their times. While the database is unavailable the figures are
the "figures" component's last ones (``DatabaseFigures``) and the snapshot says so.

Owns no task; only the Trio thread uses it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import attrs
import trio

from dispatch.dashboard.formats import utc
from dispatch.dashboard.sources import DashboardSources
from dispatch.dashboard.statuses import BADGES, status_label
from dispatch.monitoring.health import check_health
from dispatch.relays.registry import suspension_of
from dispatch.spool import Spool
from dispatch.spool.index import SpoolCounts
from dispatch.storage.database import DatabaseUnavailableError
from dispatch.storage.message_search import MessageRow, latest_received
from dispatch.storage.records import EVENT_KINDS
from dispatch.storage.throughput import counts_last_minutes

FIGURES_SECONDS: Final = 1.0
HEALTH_SECONDS: Final = 10.0
LATEST_MESSAGES: Final = 8


@attrs.frozen
class RelayState:
    """One configured relay as the Overview shows it."""

    name: str
    kind: str
    inflight: int
    delivered_today: int
    failed_today: int
    suspended: str | None  # why its deliveries fail fast, or None
    suspended_until: float | None  # Unix time the next trial may connect (None: not suspended)


@attrs.frozen
class Figures:
    """What the database tells: events today and in the last 5 minutes, per relay today,
    the newest messages; ``error`` says why they are stale (database unavailable)."""

    today: Mapping[str, int]
    last_5m: Mapping[str, int]
    relays: Mapping[str, Mapping[str, int]]
    latest: tuple[MessageRow, ...]
    error: str | None = None


@attrs.frozen
class LatestMessage:
    """One of the newest messages, as texts (the page renders them as they are)."""

    id: str
    at: str
    sender: str
    to: str
    subject: str
    status: str
    badge: str

    @classmethod
    def of(cls, row: MessageRow, spool: Spool) -> LatestMessage:
        received = row.received
        status = status_label(spool, received.message_id, row.latest)
        return cls(
            id=received.message_id or "",
            at=utc(received.at),
            sender=received.sender or "<>",
            to=", ".join(received.recipients),
            subject=received.subject or "",
            status=status,
            badge=BADGES.get(status, ""),
        )


@attrs.frozen
class Snapshot:
    """The Overview at one moment (see the module docstring)."""

    at: float
    figures: Figures
    spool: SpoolCounts
    next_due: float | None
    relays: tuple[RelayState, ...]
    health_status: str
    health: Mapping[str, Any]
    latest: tuple[LatestMessage, ...]

    def live_values(self) -> dict[str, str]:
        """The page's live texts by ``data-live`` key (``today.received``,
        ``relay.<name>.inflight``, ``health.status`` …)."""
        values: dict[str, str] = {}
        for event in EVENT_KINDS:
            values[f"today.{event}"] = f"{self.figures.today.get(event, 0):,}"
            values[f"last5m.{event}"] = f"{self.figures.last_5m.get(event, 0):,}"
        spool = self.spool
        values |= {
            "spool.queued": f"{spool.incoming - spool.retrying:,}",
            "spool.retrying": f"{spool.retrying:,}",
            "spool.processing": f"{spool.processing:,}",
            "spool.failed": f"{spool.failed:,}",
            "spool.next_due": utc(self.next_due) if self.next_due is not None else "nothing waits",
            "health.status": self.health_status,
            "database.error": self.figures.error or "",
        }
        for name, check in self.health.get("checks", {}).items():
            values[f"health.{name}"] = str(check.get("status", ""))
            values[f"health.{name}.error"] = str(check.get("error", ""))
        for relay in self.relays:
            values[f"relay.{relay.name}.inflight"] = f"{relay.inflight:,}"
            values[f"relay.{relay.name}.delivered"] = f"{relay.delivered_today:,}"
            values[f"relay.{relay.name}.failed"] = f"{relay.failed_today:,}"
            values[f"relay.{relay.name}.state"] = relay_state_text(relay)
        return values

    def latest_rows(self) -> list[dict[str, str]]:
        """The newest messages as the page's script renders them (plain texts)."""
        return [attrs.asdict(message) for message in self.latest]


def relay_state_text(relay: RelayState, now: float | None = None) -> str:
    """``delivering``; ``suspended until <time>`` while its deliveries fail fast; after that,
    until a connection works again, ``suspended: the next delivery tries one connection``."""
    if relay.suspended is None:
        return "delivering"
    at = time.time() if now is None else now
    if relay.suspended_until is None or relay.suspended_until <= at:
        return "suspended: the next delivery tries one connection"
    return f"suspended until {utc(relay.suspended_until)}"


class OverviewFeed:
    """Builds :class:`Snapshot` objects for every viewer, reading the database and running
    the health checks no more often than the module's intervals. Uses ``sources``."""

    def __init__(self, sources: DashboardSources) -> None:
        self._sources = sources
        self._figures: Figures | None = None
        self._figures_at = -1e9
        self._health: tuple[str, Mapping[str, Any]] = ("unknown", {})
        self._health_at = -1e9
        self._lock = trio.Lock()  # one refresh at a time; the others wait and share it

    async def snapshot(self) -> Snapshot:
        async with self._lock:
            now = trio.current_time()
            if now - self._figures_at >= FIGURES_SECONDS or self._figures is None:
                self._figures = await self._read_figures()
                self._figures_at = trio.current_time()
            if now - self._health_at >= HEALTH_SECONDS:
                self._health = await check_health(self._sources.health)
                self._health_at = trio.current_time()
        spool = self._sources.spool
        status, document = self._health
        return Snapshot(
            at=time.time(),
            figures=self._figures,
            spool=spool.counts(),
            next_due=spool.next_due_time(),
            relays=self._relay_states(self._figures),
            health_status=status,
            health=document,
            latest=tuple(LatestMessage.of(row, spool) for row in self._figures.latest),
        )

    async def _read_figures(self) -> Figures:
        store = self._sources.store
        try:
            today = await store.queries.counts_today()
            last_5m = await counts_last_minutes(store.database, 5)
            relays = await store.queries.relay_counts_today()
            latest = await latest_received(store.database, LATEST_MESSAGES)
        except DatabaseUnavailableError as exc:
            cached = self._sources.figures
            last = self._figures
            return Figures(
                today=cached.counts_today(),
                last_5m=last.last_5m if last else {},
                relays=cached.relay_counts_today(),
                latest=last.latest if last else (),
                error=str(exc) or "the database is unavailable",
            )
        return Figures(today, last_5m, relays, tuple(latest))

    def _relay_states(self, figures: Figures) -> tuple[RelayState, ...]:
        states = []
        for relay in self._sources.relays.all():
            suspension = suspension_of(relay)
            reason = None if suspension is None else suspension.reason
            until = None
            if suspension is not None and reason is not None:
                until = time.time() + suspension.seconds_left()
            today = figures.relays.get(relay.name, {})
            states.append(
                RelayState(
                    name=relay.name,
                    kind=relay.kind,
                    inflight=relay.inflight,
                    delivered_today=today.get("delivered", 0),
                    failed_today=today.get("failed", 0),
                    suspended=reason,
                    suspended_until=until,
                )
            )
        return tuple(states)
