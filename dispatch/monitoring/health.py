"""``/health`` (SPEC §9): every check concurrent, each under its own deadline, never hanging.

Theory of operation: the checks (database, disk, spool) run at once in one nursery, each
inside its own cancel scope whose deadline is the probe's deadline (``health.timeout_seconds``
from the request, less a margin to write the answer). Blocking probes run in worker threads
with ``abandon_on_cancel=True``: when the deadline passes the check reports ``timeout`` and
the answer goes out, while the stuck thread is left behind. Each check draws its threads
from a limiter of its own (:data:`PROBE_THREADS`), so a wedged database holds at most that
many threads however often it is probed, later database probes time out the same way
instead of queueing, and the disk and spool checks are never starved by it. The database
probe opens its own short-lived connection: the store's connection may be what is stuck.

Status rules: ``critical`` (HTTP 503) when free disk is below ``health.disk_critical_bytes``
or the spool is not writable (or its check cannot finish: intake would hang the same way);
``degraded`` when the database is unreachable or slow, free disk is below
``health.disk_warning_bytes`` or cannot be read, SMTP listens on fewer or other ports than
configured, or the ``delivery`` check finds mail not leaving (a relay suspended or failing
with mail waiting for it, or the queue behind: :mod:`dispatch.monitoring.delivery_health`);
``healthy`` otherwise.

For orchestrators, :func:`liveness` (``/health/live``: the event loop answers, nothing else is
done) and :func:`check_readiness` (``/health/ready``: start-up finished, SMTP listening, the
spool writable) answer under the same deadline, the spool probe drawing from the same limiter.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import trio

from dispatch import __version__
from dispatch.config.settings import HealthSettings
from dispatch.monitoring.delivery_health import DeliverySources, check_delivery
from dispatch.monitoring.traces import Tracer
from dispatch.spool import SpoolCounts
from dispatch.storage import sqlite_path
from dispatch.storage.postgres import is_postgresql_url
from dispatch.storage.postgres import probe as probe_postgres

CheckStatus = Literal["ok", "timeout", "error"]
Status = Literal["healthy", "degraded", "critical"]

PROBE_THREADS: Final = {name: trio.CapacityLimiter(2) for name in ("database", "disk", "spool")}
# Part of the deadline kept for everything after the checks: serialising and sending the
# answer, and, under load, waiting for a busy event loop to get back to this request: with a
# wedged database and a fixed 0.1 s margin, a loaded daemon answers at 1.92 s of 2 s.
ANSWER_MARGIN_SHARE: Final = 0.25
MIN_ANSWER_MARGIN: Final = 0.1
DATABASE_BUSY_SECONDS: Final = 30.0  # the probe waits on a lock; its deadline cuts it short


@attrs.frozen
class CheckResult:
    status: CheckStatus
    duration_ms: float
    value: Any = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status, "durationMs": round(self.duration_ms, 2)}
        if self.error:
            data["error"] = self.error
        return data


async def _timed(name: str, probe: Callable[[], Any], deadline: float) -> CheckResult:
    """Run a blocking probe in a thread; ``timeout`` if it is not done by ``deadline``."""
    started = time.perf_counter()
    with trio.move_on_at(deadline):
        try:
            value = await trio.to_thread.run_sync(
                probe, abandon_on_cancel=True, limiter=PROBE_THREADS[name]
            )
        except (OSError, sqlite3.Error, ValueError) as exc:
            return CheckResult("error", (time.perf_counter() - started) * 1000, error=str(exc))
        return CheckResult("ok", (time.perf_counter() - started) * 1000, value)
    return CheckResult("timeout", (time.perf_counter() - started) * 1000)


_SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")  # present while in use (WAL mode)


def _denied_by_mode(path: Path, want: int) -> str | None:
    """Which of ``want`` (``os.R_OK | os.W_OK | os.X_OK``) the permissions of ``path`` deny
    this process, or None.

    Not root: the kernel's own answer (``os.access`` with the effective ids, so ACLs count).
    Root: the kernel lets root open anything, so a fresh open proves nothing and a file set
    to mode ``000`` would look fine; the mode bits are judged instead, as the kernel judges
    every other user (owner, else group, else other bits). Such a file breaks the daemon as
    soon as it runs as its service user, or reopens the file after a restore.
    """
    names = [(os.R_OK, "read"), (os.W_OK, "write"), (os.X_OK, "search")]
    if os.geteuid() != 0:
        missing = [
            n for bit, n in names if want & bit and not os.access(path, bit, effective_ids=True)
        ]
    else:
        st = path.stat()
        if st.st_uid == 0:
            bits = st.st_mode >> 6
        elif st.st_gid == os.getegid() or st.st_gid in os.getgroups():
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        missing = [n for bit, n in names if want & bit and not bits & bit]
    if not missing:
        return None
    mode = oct(path.stat().st_mode & 0o777)[2:].rjust(3, "0")
    return f"{path} (mode {mode}) denies {' and '.join(missing)} to the daemon's user"


def probe_sqlite(url: str) -> None:
    """Check the database as a fresh open would see it, then take and release the write lock
    on a connection of our own (then close it).

    The permission check comes first: running as root, the connection would open a file
    whatever its mode (see :func:`_denied_by_mode`).
    """
    path = sqlite_path(url)
    if not path.exists():
        raise OSError(f"database file {path} does not exist")
    checks = [(path, os.R_OK | os.W_OK), (path.parent, os.W_OK | os.X_OK)]
    checks += [
        (side, os.R_OK | os.W_OK)
        for suffix in _SQLITE_SIDE_FILES
        if (side := Path(f"{path}{suffix}")).exists()
    ]
    for checked, want in checks:
        try:
            problem = _denied_by_mode(checked, want)
        except FileNotFoundError:
            continue  # a side file removed since it was listed (a checkpoint): nothing to open
        if problem is not None:
            raise PermissionError(f"cannot reopen the database: {problem}; fix its permissions")
    connection = sqlite3.connect(path, timeout=DATABASE_BUSY_SECONDS, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def probe_database(url: str) -> None:
    """The database check for either engine (PostgreSQL: ``dispatch.storage.postgres.probe``)."""
    if is_postgresql_url(url):
        probe_postgres(url, DATABASE_BUSY_SECONDS)
    else:
        probe_sqlite(url)


def probe_spool_writable(directory: Path) -> None:
    """Create and remove a file in the spool's ``tmp/`` (intake writes there first)."""
    path = directory / "tmp" / f".health-{secrets.token_hex(4)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        path.unlink()


@attrs.frozen
class HealthSources:
    """Where /health reads from; all in-memory except the probes."""

    settings: Callable[[], HealthSettings]
    database_url: str
    spool_directory: Path
    spool_counts: Callable[[], SpoolCounts]
    smtp_ports: Callable[[], tuple[tuple[int, ...], tuple[int, ...]]]  # configured, listening
    started_at: float  # time.monotonic() at process start
    delivery: DeliverySources
    startup_done: Callable[[], bool]  # every component has started (the supervisor's ready)
    tracer: Tracer | None = None


def answer_deadline(settings: HealthSettings) -> float:
    """The Trio time by which the checks must be done, so that the answer goes out within
    ``health.timeout_seconds`` of the request."""
    margin = max(MIN_ANSWER_MARGIN, settings.timeout_seconds * ANSWER_MARGIN_SHARE)
    return trio.current_time() + max(0.05, settings.timeout_seconds - margin)


async def check_health(sources: HealthSources) -> tuple[Status, dict[str, Any]]:
    """The /health document and its status; returns within ``health.timeout_seconds``."""
    settings = sources.settings()
    deadline = answer_deadline(settings)
    results: dict[str, CheckResult] = {}
    directory = sources.spool_directory.absolute()

    async def run(name: str, probe: Callable[[], Any]) -> None:
        results[name] = await _timed(name, probe, deadline)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "database", lambda: probe_database(sources.database_url))
        nursery.start_soon(run, "disk", lambda: shutil.disk_usage(directory))
        nursery.start_soon(run, "spool", lambda: probe_spool_writable(directory))

    database, disk, spool = results["database"], results["disk"], results["spool"]
    delivery = check_delivery(sources.delivery, settings.queue_age_warning_seconds)
    configured, listening = sources.smtp_ports()
    counts = sources.spool_counts()
    free = total = None
    if disk.status == "ok":
        free, total = disk.value.free, disk.value.total

    status: Status = "healthy"
    if (
        database.status != "ok"
        or disk.status != "ok"
        or (free is not None and free < settings.disk_warning_bytes)
        or set(listening) != set(configured)
        or delivery.degraded
    ):
        status = "degraded"
    if spool.status != "ok" or (free is not None and free < settings.disk_critical_bytes):
        status = "critical"

    document = {
        "status": status,
        "version": __version__,
        "uptimeSeconds": round(time.monotonic() - sources.started_at, 3),
        "database": {
            "reachable": database.status == "ok",
            "latencyMs": round(database.duration_ms, 2) if database.status == "ok" else None,
        },
        "disk": {"path": str(directory), "freeBytes": free, "totalBytes": total},
        "spool": {
            "incoming": counts.incoming,
            "processing": counts.processing,
            "failed": counts.failed,
        },
        "smtp": {
            "configuredPorts": list(configured),
            "listeningPorts": list(listening),
            "ports": list(configured),
        },
        "checks": {
            **{name: results[name].as_json() for name in ("database", "disk", "spool")},
            "delivery": delivery.as_json(),
        },
    }
    if sources.tracer is not None:
        with sources.tracer.trace("health", status) as trace:
            for name, result in results.items():
                line = f"{name}: {result.status} in {result.duration_ms:.1f} ms"
                if result.status == "ok":
                    trace.event(line)
                else:
                    trace.error(f"{line} {result.error or ''}")
            for reason in delivery.reasons:
                trace.error(f"delivery: {reason}")
    return status, document


def liveness(sources: HealthSources) -> dict[str, Any]:
    """The /health/live document: answering at all is the proof (the event loop runs).

    Nothing is probed: a down relay, a full disk or an unreachable database are not cured by
    restarting the process, and the supervisor already restarts crashed components. A wedged
    event loop does not answer, which the orchestrator's probe timeout turns into a failure.
    """
    return {
        "status": "live",
        "reason": "the event loop answered",
        "uptimeSeconds": round(time.monotonic() - sources.started_at, 3),
    }


async def check_readiness(sources: HealthSources) -> tuple[bool, dict[str, Any]]:
    """The /health/ready document: ready when start-up has finished (the spool recovered and
    indexed, every component started), SMTP listens on at least one port and the spool takes
    a new file. Returns within ``health.timeout_seconds``: a spool probe that does not finish
    by the deadline counts as not writable."""
    deadline = answer_deadline(sources.settings())
    directory = sources.spool_directory.absolute()
    spool = await _timed("spool", lambda: probe_spool_writable(directory), deadline)
    started = sources.startup_done()
    configured, listening = sources.smtp_ports()
    reasons = []
    if not started:
        reasons.append("start-up has not finished: not every component has started yet")
    if not listening:
        ports = ", ".join(map(str, configured)) or "none"
        reasons.append(f"SMTP is not listening on any port (configured: {ports})")
    if spool.status == "timeout":
        reasons.append(f"the spool at {directory} did not take a new file within the deadline")
    elif spool.status != "ok":
        reasons.append(f"the spool at {directory} is not writable: {spool.error}")
    ports = ", ".join(map(str, listening))
    return not reasons, {
        "status": "unready" if reasons else "ready",
        "reason": "; ".join(reasons) or f"accepting mail on SMTP port(s) {ports}",
        "startupDone": started,
        "smtp": {"configuredPorts": list(configured), "listeningPorts": list(listening)},
        "spoolWritable": spool.status == "ok",
        "checks": {"spool": spool.as_json()},
    }
