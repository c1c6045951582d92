"""The retention component: old log rows, failed spool files and captured mail go away.

SPEC §2 ``retention.*_days`` (all live), §7. At start and then every :data:`RUN_INTERVAL`
seconds one *run* removes what is older than its key; ``0`` keeps that kind forever:

=========================  ====================================================================
key                        what goes once it is older than the key
=========================  ====================================================================
``delivered_log_days``     message-log rows of event ``delivered``
``failed_log_days``        message-log rows of event ``failed``
(both of the above)        rows of events ``received``, ``retried`` and ``denied``: they belong
                           to either outcome, so they are kept as long as the longer of the
                           two keys, and forever if either key is ``0``
``audit_log_days``         audit-log rows
``failed_spool_days``      messages in the spool's ``failed/`` (by the time their envelope was
                           last written: when delivery gave up), body and envelope; and bodies
                           start-up set aside in ``orphaned/`` (by the time set aside; counted
                           with them)
``captured_days``          copies in ``captured/``, the Local inbox (by the time captured)
=========================  ====================================================================

Rows go through :func:`dispatch.storage.purge.purge` (chunks of 1,000 rows, each its own short
transaction, so the log writer never waits long) and files through
:class:`dispatch.spool.sweep.SpoolSweeper` (worker threads, bounded batches). The settings are
read through a callable at the start of each run, so a SIGHUP reload that changes a key
applies at the next run.

A run that cannot finish a part — the database is down, a directory cannot be read — removes
what it can, logs what it could not do and leaves the rest to the next run; the component
itself never stops because of it. Each run logs one line with what it removed, adds to the
``dispatch/retention/*`` counters (``dispatch_retention_*`` in ``/metrics``) and leaves its
:class:`~dispatch.monitoring.stats.RetentionRun` in :attr:`Stats.retention_last_run`
(``/debug/vars``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol

import trio

from dispatch.config.settings import RetentionSettings
from dispatch.lifecycle import Shutdown
from dispatch.monitoring.stats import RETENTION_KINDS, RetentionRun, Stats
from dispatch.spool.sweep import SweepResult
from dispatch.storage import AUDIT, DatabaseUnavailableError

log = logging.getLogger("dispatch.retention")

RUN_INTERVAL: Final = 6 * 3600.0
"""Seconds between runs (SPEC §2: "purge every 6 h"); the first run is at start."""

DAY: Final = 86_400.0

# The storage kind each removed-count kind is purged as (see dispatch.storage.purge).
_LOG_KINDS: Final[Mapping[str, str]] = {
    "delivered_log": "delivered",
    "failed_log": "failed",
    "received_log": "received",
    "retried_log": "retried",
    "denied_log": "denied",
    "audit_log": AUDIT,
}


class LogPurge(Protocol):
    """What retention needs of storage (:class:`dispatch.storage.Store` has it)."""

    async def purge(
        self, older_than: Mapping[str, float], *, now: float | None = None
    ) -> dict[str, int]: ...


class SpoolSweeps(Protocol):
    """What retention needs of the spool (:class:`dispatch.spool.sweep.SpoolSweeper`)."""

    async def remove_failed(self, older_than: float) -> SweepResult: ...

    async def remove_captured(self, older_than: float) -> SweepResult: ...


def ages(settings: RetentionSettings) -> dict[str, float]:
    """Seconds each kind of :data:`RETENTION_KINDS` is kept (``0.0``: forever)."""
    delivered = settings.delivered_log_days * DAY
    failed = settings.failed_log_days * DAY
    either = 0.0 if not delivered or not failed else max(delivered, failed)
    return {
        "delivered_log": delivered,
        "failed_log": failed,
        "received_log": either,
        "retried_log": either,
        "denied_log": either,
        "audit_log": settings.audit_log_days * DAY,
        "failed_spool": settings.failed_spool_days * DAY,
        "captured": settings.captured_days * DAY,
    }


class Retention:
    """Runs retention at start and every ``interval`` seconds until the stop request.

    Owns no resource: it removes rows through ``store`` and files through ``spool``, reads the
    ``retention`` settings through ``settings`` at each run and records each run in
    ``stats``. ``clock`` is the wall clock ages are measured against (tests move it).
    """

    def __init__(
        self,
        settings: Callable[[], RetentionSettings],
        store: LogPurge,
        spool: SpoolSweeps,
        stats: Stats,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = RUN_INTERVAL,
    ) -> None:
        self._settings = settings
        self._store = store
        self._spool = spool
        self._stats = stats
        self._clock = clock
        self._interval = interval

    async def run(
        self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The "retention" component: ready at once, first run right after, then one run
        every interval. On the stop request a run in progress is cancelled between two
        batches (rows and files removed so far stay removed) and the component returns."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._every_interval)
            await shutdown.requested.wait()
            nursery.cancel_scope.cancel()

    async def _every_interval(self) -> None:
        while True:
            await self.run_once()
            await trio.sleep(self._interval)

    async def run_once(self) -> RetentionRun:
        """One run: remove what is too old, log it, count it; return what it did.

        Never raises but for cancellation: what fails is logged and in the result's ``errors``.
        """
        keep = ages(self._settings())
        started, began = self._clock(), time.monotonic()
        removed = dict.fromkeys(RETENTION_KINDS, 0)
        errors: list[str] = []
        await self._purge_rows(keep, started, removed, errors)
        for kind, sweep in (
            ("failed_spool", self._spool.remove_failed),
            ("captured", self._spool.remove_captured),
        ):
            if keep[kind] > 0:
                removed[kind] = await self._sweep(kind, sweep, started - keep[kind], errors)
        run = RetentionRun(started, time.monotonic() - began, removed, tuple(errors))
        self._record(run)
        return run

    async def _purge_rows(
        self, keep: Mapping[str, float], now: float, removed: dict[str, int], errors: list[str]
    ) -> None:
        """One kind at a time, so the counts of the kinds done stay known if the database
        goes away in the middle; then the rest waits for the next run."""
        for kind, stored_as in _LOG_KINDS.items():
            if keep[kind] <= 0:
                continue
            try:
                deleted = await self._store.purge({stored_as: keep[kind]}, now=now)
            except DatabaseUnavailableError as exc:
                errors.append(f"{kind}: database unavailable ({exc or type(exc).__name__})")
                return
            except Exception as exc:
                log.exception("retention: removing %s rows failed", kind)
                errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                return
            removed[kind] = deleted.get(stored_as, 0)

    @staticmethod
    async def _sweep(
        kind: str,
        sweep: Callable[[float], Awaitable[SweepResult]],
        older_than: float,
        errors: list[str],
    ) -> int:
        """Run one spool sweep; return how many it removed. A bug in it is logged with its
        traceback and waits for the next run instead of crashing the component (the
        supervisor would only start it, and so the same run, again)."""
        try:
            result = await sweep(older_than)
        except Exception as exc:
            log.exception("retention: removing %s failed", kind)
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return 0
        if result.error is not None:
            errors.append(f"{kind}: {result.error}")
        return result.removed

    def _record(self, run: RetentionRun) -> None:
        stats = self._stats
        stats.retention_runs.add("ok" if run.ok else "failed")
        for kind, count in run.removed.items():
            if count:
                stats.retention_removed.add(kind, count)
        stats.retention_last_run = run
        if run.ok:
            stats.retention_last_success = run.started_at + run.duration_seconds
        removed = " ".join(f"{kind}={count}" for kind, count in run.removed.items())
        if run.ok:
            log.info("retention run removed %s in %.2f s", removed, run.duration_seconds)
        else:
            log.warning(
                "retention run removed %s in %.2f s; not done, left for the next run in %s: %s",
                removed,
                run.duration_seconds,
                _interval_text(self._interval),
                "; ".join(run.errors),
            )


def _interval_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"
