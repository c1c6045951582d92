"""The intake worker processes, seen from the main process (``listener.processes`` > 1).

One SMTP process is bounded by one core: most of a message's cost is socket calls and the
scheduling around them, which Python runs one at a time. ``listener.processes = N`` makes the
main process start N - 1 workers (``intake/worker.py``) that accept on the same listening
sockets; the main process keeps its own listener as the N-th.

:class:`IntakeWorkers` owns those processes and their links. For each worker it starts the
process, sends the settings (and again after every reload), and applies what comes back:
committed envelopes are indexed by the spool (:meth:`~dispatch.spool.Spool.adopt`), events go
to the message log, counters are merged into the main process's :class:`Stats`. A worker that
exits unexpectedly is logged and started again with back-off; meanwhile
:meth:`~dispatch.spool.Spool.adopt_unannounced` queues whatever it committed but did not get
to announce, so no acknowledged message waits for the next restart of Dispatch.

Ready once every worker has said it is ready. Stopping (``shutdown.requested``): each worker
gets SIGTERM and drains like the main listener; the links are read to their end so that
every commit is indexed. On cancellation (the grace period ran out) the workers are killed;
the spool on disk is the truth and the next start-up recovers what they left.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Final

import trio

from dispatch.config.settings import Settings
from dispatch.intake.link import Link, LinkBroken
from dispatch.lifecycle import RestartBackoff, Shutdown
from dispatch.logs import logging_options
from dispatch.monitoring.stats import Stats
from dispatch.spool import Envelope, Spool
from dispatch.storage.records import MessageEvent

log = logging.getLogger("dispatch.smtp")

READY_SECONDS: Final = 30.0
SETTINGS_POLL_SECONDS: Final = 1.0


class WorkerStartError(Exception):
    """An intake worker process did not become ready."""


class _LinkState:
    def __init__(self) -> None:
        self.ready = False
        self.changed = trio.Event()  # ready, or the link ended first
        self.ended = trio.Event()


class IntakeWorkers:
    """See the module docstring."""

    def __init__(
        self,
        count: int,
        settings: Callable[[], Settings],
        spool: Spool,
        stats: Stats,
        record: Callable[[MessageEvent], None],
    ) -> None:
        self.count = count
        self._settings = settings
        self._spool = spool
        self._stats = stats
        self._record = record

    async def run(
        self,
        listeners: list[trio.SocketListener],
        shutdown: Shutdown,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            if self.count:
                # After a restart of this component its killed workers may have left
                # commits nobody indexed (at the first start there are none: recovery ran).
                nursery.start_soon(self._spool.adopt_unannounced)
            for number in range(2, self.count + 2):
                await nursery.start(self._keep_running, number, listeners, shutdown)
            task_status.started()

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
        ours, theirs = socket.socketpair()
        fds = [listener.socket.fileno() for listener in listeners]
        log_format, log_level = logging_options()
        argv = [
            sys.executable,
            "-m",
            "dispatch",
            "intake-worker",
            f"--number={number}",
            f"--link-fd={theirs.fileno()}",
            f"--listen-fds={','.join(map(str, fds))}",
            f"--log-format={log_format}",
            f"--log-level={log_level}",
        ]
        try:
            process = await trio.lowlevel.open_process(
                argv, pass_fds=(theirs.fileno(), *fds), stdin=subprocess.DEVNULL
            )
        finally:
            theirs.close()
        link = Link(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        state = _LinkState()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_link, link, state)
                nursery.start_soon(self._push_settings, link)  # the worker waits for them
                with trio.move_on_after(READY_SECONDS):
                    await state.changed.wait()
                if not state.ready:
                    raise WorkerStartError(
                        f"intake worker {number} did not become ready"
                        + (" (it exited)" if state.ended.is_set() else "")
                    )
                nursery.start_soon(self._stop_on_request, process, shutdown)
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
            await link.aclose()

    async def _serve_link(self, link: Link, state: _LinkState) -> None:
        """Apply what the worker sends until the link ends."""
        try:
            while (batch := await link.receive()) is not None:
                for message in batch if isinstance(batch, list) else [("not a list", batch)]:
                    self._apply(message, state)
        except (trio.BrokenResourceError, LinkBroken) as exc:
            log.error("link to an intake worker broke: %s", exc)
        finally:
            state.ended.set()
            state.changed.set()

    def _apply(self, message: object, state: _LinkState) -> None:
        match message:
            case ("committed", bytes() as envelope):  # its file's bytes
                self._spool.adopt(Envelope.from_json(envelope))
            case ("event", MessageEvent() as event):
                self._record(event)
            case ("stats", dict() as taken):
                self._stats.merge(taken)
            case ("ready",):
                state.ready = True
                state.changed.set()
            case _:
                log.error("intake worker sent something unexpected: %.100r", message)

    async def _push_settings(self, link: Link) -> None:
        sent: Settings | None = None
        while True:
            current = self._settings()
            if current is not sent:
                try:
                    await link.send(current)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                sent = current
            await trio.sleep(SETTINGS_POLL_SECONDS)

    async def _stop_on_request(self, process: trio.Process, shutdown: Shutdown) -> None:
        await shutdown.requested.wait()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await trio.sleep(math.inf)
