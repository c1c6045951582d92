"""The intake worker processes, seen from the main process (``listener.processes`` > 1).

One SMTP process is bounded by one core: most of a message's cost is socket calls and the
scheduling around them, which Python runs one at a time. ``listener.processes = N`` (N > 1)
makes the main process start N workers (``intake/worker.py``) that accept on the same
listening sockets; the main process takes no SMTP session itself, so its event loop is left to
supervision, delivery, the API and ``/health`` (``intake/service.py``).

:class:`IntakeWorkers` owns those processes and their links (typed messages, see
``intake/link.py``). For each worker it starts the process, sends :class:`Start` (the listener
settings, the spool directory, the certificate), then waits on the live settings and sends
:class:`ListenerChanged` as soon as a reload changes ``listener.*`` — pushed, never polled —
and :class:`SuppressionChanged` when the addresses its sessions must refuse change (compared
every few seconds with what it was last sent; ``intake/suppression.py``). It applies what
comes back: committed envelopes are indexed by the spool
(:meth:`~dispatch.spool.Spool.adopt`), events go to the message log, counters are merged into
the main process's :class:`Stats`. A worker that exits unexpectedly is logged and started again
with back-off; meanwhile :meth:`~dispatch.spool.Spool.adopt_unannounced` queues whatever it
committed but did not get to announce, so no acknowledged message waits for the next restart
of Dispatch. A link that breaks (a frame that is not a valid message) is logged and closed:
the worker takes that as the main process gone, drains, exits and is started again, and its
unannounced commits are adopted the same way.

Ready once every worker has said it is ready. Stopping (``shutdown.requested``): each worker
gets SIGTERM and drains like the main listener; the links are read to their end so that
every commit is indexed. On cancellation (the grace period ran out) the workers are killed;
the spool on disk is the truth and the next start-up recovers what they left.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Final, assert_never

import trio

from dispatch.config.settings import Settings
from dispatch.intake import records
from dispatch.intake.balance import make_counts_file, mark_absent
from dispatch.intake.link import (
    FROM_WORKER,
    BadMessage,
    Committed,
    Counters,
    FromWorker,
    Link,
    LinkBroken,
    ListenerChanged,
    Logged,
    Ready,
    Start,
    SuppressionChanged,
)
from dispatch.lifecycle import RestartBackoff, Shutdown
from dispatch.logs import logging_options
from dispatch.monitoring.stats import Stats
from dispatch.security.certs import CertificateFiles, ensure_certificate
from dispatch.spool import Spool
from dispatch.storage.records import AuditEntry, MessageEvent
from dispatch.storage.suppression import REFRESH_SECONDS, Suppression

log = logging.getLogger("dispatch.smtp")

READY_SECONDS: Final = 30.0
# How often the entries workers refuse at RCPT are compared with those last pushed: the
# list's own re-read interval, so a change reaches the workers within two of them.
SUPPRESSION_CHECK_SECONDS: Final = REFRESH_SECONDS


class WorkerStartError(Exception):
    """An intake worker process did not become ready."""


class _LinkState:
    def __init__(self) -> None:
        self.ready = False
        self.changed = trio.Event()  # ready, or the link ended first
        self.ended = trio.Event()


def worker_core(number: int) -> int:
    """The core intake worker ``number`` (2, 3, …) runs on with ``listener.pin_processes``:
    round robin over the cores this process may run on (its CPU affinity, as ``"auto"``
    counts them).

    Why pin: a commit hands its file work to a writer thread and back (``spool/writer.py``).
    Left to the kernel, the worker's threads spread over the cores, and every hand-off wakes a
    thread on another core — an inter-processor interrupt, costly in a virtual machine. On
    one core each the hand-off stays there (docs/intake-cpu.md, round 8). The main process is
    never pinned: it takes no SMTP session and goes wherever there is room.
    """
    cores = sorted(os.sched_getaffinity(0))
    return cores[(number - 2) % len(cores)]


class IntakeWorkers:
    """See the module docstring.

    ``settings`` gives the current settings, ``wait_changed`` returns after the next reload
    that changed them (:meth:`~dispatch.config.live.LiveSettings.wait_changed`).
    """

    def __init__(
        self,
        count: int,
        settings: Callable[[], Settings],
        wait_changed: Callable[[], Awaitable[None]],
        spool: Spool,
        stats: Stats,
        record: Callable[[MessageEvent], None],
        audit: Callable[[AuditEntry], None],
        suppressions: Callable[[], Awaitable[tuple[Suppression, ...]]] | None = None,
    ) -> None:
        """``suppressions`` gives the entries the workers' sessions refuse at RCPT (none
        when the list is off or in delivery mode); pushed to them when they change."""
        self.count = count
        self._suppressions = suppressions
        self._settings = settings
        self._wait_changed = wait_changed
        self._spool = spool
        self._stats = stats
        self._record = record
        self._audit = audit
        self._counts_fd = -1  # intake/balance.py: made by run(), passed to every worker

    async def run(
        self,
        listeners: list[trio.SocketListener],
        shutdown: Shutdown,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if not self.count:
            task_status.started()
            return
        self._counts_fd = make_counts_file(self.count)  # the connections each worker holds
        try:
            async with trio.open_nursery() as nursery:
                # After a restart of this component its killed workers may have left commits
                # nobody indexed (at the first start there are none: recovery ran).
                nursery.start_soon(self._spool.adopt_unannounced)
                for number in range(2, self.count + 2):
                    await nursery.start(self._keep_running, number, listeners, shutdown)
                task_status.started()
        finally:
            os.close(self._counts_fd)

    async def _keep_running(
        self,
        number: int,
        listeners: list[trio.SocketListener],
        shutdown: Shutdown,
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Run worker ``number`` until the stop request, restarting it when it dies."""
        backoff = RestartBackoff()
        async with trio.open_nursery() as rescues:
            while True:
                started = trio.current_time()
                try:
                    code: int | str = await self._run_once(number, listeners, shutdown, task_status)
                except WorkerStartError as exc:
                    if task_status is not trio.TASK_STATUS_IGNORED:
                        raise  # the first start: Dispatch cannot run as configured
                    code = str(exc)
                task_status = trio.TASK_STATUS_IGNORED  # ready was said the first time
                if shutdown.requested.is_set():
                    return
                delay = backoff.delay(trio.current_time() - started)
                log.error(
                    "intake worker %d ended (%s); starting it again in %.1f s",
                    number,
                    code,
                    delay,
                )
                rescues.start_soon(self._spool.adopt_unannounced)
                if not await backoff.wait(delay, shutdown):
                    return

    async def _run_once(
        self,
        number: int,
        listeners: list[trio.SocketListener],
        shutdown: Shutdown,
        task_status: trio.TaskStatus[None],
    ) -> int:
        """Start the process, serve its link to the end, wait for it; return its exit code."""
        files = await trio.to_thread.run_sync(ensure_certificate, self._settings())
        ours, theirs = socket.socketpair()
        fds = [listener.socket.fileno() for listener in listeners]
        log_format, log_level = logging_options()
        core = worker_core(number) if self._settings().listener.pin_processes else None
        argv = [
            sys.executable,
            "-m",
            "dispatch",
            "intake-worker",
            f"--number={number}",
            f"--link-fd={theirs.fileno()}",
            f"--listen-fds={','.join(map(str, fds))}",
            f"--counts-fd={self._counts_fd}",
            f"--log-format={log_format}",
            f"--log-level={log_level}",
            *([] if core is None else [f"--core={core}"]),
        ]
        try:
            process = await trio.lowlevel.open_process(
                argv, pass_fds=(theirs.fileno(), *fds, self._counts_fd), stdin=subprocess.DEVNULL
            )
        finally:
            theirs.close()
        link = Link(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), FROM_WORKER)
        state = _LinkState()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_link, number, link, state)
                nursery.start_soon(self._push_settings, link, files)  # the worker waits for them
                with trio.move_on_after(READY_SECONDS):
                    await state.changed.wait()
                if not state.ready:
                    raise WorkerStartError(
                        f"intake worker {number} did not become ready"
                        + (" (it exited)" if state.ended.is_set() else "")
                    )
                nursery.start_soon(self._stop_on_request, process, shutdown)
                if self._suppressions is not None:  # after Start, which must come first
                    nursery.start_soon(self._push_suppressions, link, self._suppressions)
                task_status.started()
                await process.wait()
                await state.ended.wait()  # every announcement made before the exit applied
                nursery.cancel_scope.cancel()
            return await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            mark_absent(self._counts_fd, number - 2)  # its connections died with it
            await link.aclose()

    async def _serve_link(self, number: int, link: Link[FromWorker], state: _LinkState) -> None:
        """Apply what the worker sends until the link ends; close a link that breaks."""
        try:
            while (batch := await link.receive()) is not None:
                for message in batch:
                    self._apply(message, state)
        except (trio.BrokenResourceError, LinkBroken) as exc:
            # The worker reads the close as "the main process has gone": it drains and exits,
            # and is started again; whatever it committed is adopted from the spool.
            log.error("link to intake worker %d broke, closing it: %s", number, exc)
            await link.aclose()
        finally:
            state.ended.set()
            state.changed.set()

    def _apply(self, message: FromWorker, state: _LinkState) -> None:
        match message:
            case Committed(envelope, received=received, subject=subject):
                self._spool.adopt(envelope)
                if received:
                    self._record(records.received(envelope, subject=subject))
            case Logged(event):
                if isinstance(event, AuditEntry):
                    self._audit(event)
                else:
                    self._record(event)
            case Counters(figures):
                try:
                    self._stats.merge(figures)
                except (TypeError, ValueError) as exc:  # e.g. a histogram of other buckets
                    raise BadMessage(f"intake link: counters that do not add up: {exc}") from None
            case Ready():
                state.ready = True
                state.changed.set()
            case _:
                assert_never(message)

    async def _push_settings(self, link: Link[FromWorker], files: CertificateFiles) -> None:
        """Send :class:`Start`, then :class:`ListenerChanged` on each reload that changes it.

        Checking the settings and starting to wait happen without a checkpoint between them,
        so a reload that lands while a send is under way is seen by the next check.
        """
        sent: object = None
        while True:
            current = self._settings()
            if sent is None:
                message: Start | ListenerChanged = Start(
                    current.listener, current.spool.directory, files
                )
            elif current.listener != sent:
                message = ListenerChanged(current.listener)
            else:
                await self._wait_changed()
                continue
            try:
                await link.send([message])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            sent = current.listener

    async def _push_suppressions(
        self,
        link: Link[FromWorker],
        entries: Callable[[], Awaitable[tuple[Suppression, ...]]],
    ) -> None:
        """Send :class:`SuppressionChanged` when the entries differ from those last sent
        (checked every :data:`SUPPRESSION_CHECK_SECONDS`; the first check right away)."""
        sent: tuple[Suppression, ...] | None = None
        while True:
            current = await entries()
            if current != sent:
                try:
                    await link.send([SuppressionChanged(current)])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                sent = current
            await trio.sleep(SUPPRESSION_CHECK_SECONDS)

    async def _stop_on_request(self, process: trio.Process, shutdown: Shutdown) -> None:
        await shutdown.requested.wait()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await trio.sleep(math.inf)
