"""The supervisor: one Trio nursery that owns every long-lived component (SPEC §1).

Theory of operation
-------------------
Components start one after another, in the order given, each with ``nursery.start``: the
next one starts only when the previous one has called ``task_status.started()`` (bound its
sockets, loaded its state). A component that fails before it is ready ends the whole process
with :class:`ComponentStartError` (the CLI prints its one-line reason and exits 1). A
component that crashes *after* it was ready is logged with its traceback and restarted with
exponential back-off; a restart that fails to start is retried the same way.

Stopping: the first SIGTERM/SIGINT stops components one by one in reverse start order —
each one's :attr:`Shutdown.requested` is set once every component started after it has
returned, so the listeners stop accepting first and storage, which records what the others
did, stops last. A component reacts by refusing new work and finishing what it holds (SMTP
sessions get ``421``, deliveries finish or return their claims), then returns. Whatever
still runs when the grace period ends is cancelled. A second signal cancels everything at
once; the spool is the truth, so nothing acknowledged is lost either way. SIGHUP reloads the
configuration file; ``on_reload`` hears what each reload did (the daemon audits it).
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable, Sequence
from typing import Final

import trio

from dispatch.config.live import LiveSettings, ReloadResult
from dispatch.lifecycle import Component, RestartBackoff, Shutdown
from dispatch.logs import bind

log = logging.getLogger("dispatch.supervisor")

DEFAULT_GRACE_SECONDS: Final = 10.0


class ComponentStartError(Exception):
    """A component could not become ready; the process cannot run."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(f"cannot start {component}: {reason}")
        self.component = component
        self.reason = reason


def unwrap(exc: BaseException) -> BaseException:
    """The exception inside single-leaf exception groups (trio wraps every nursery's error)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """A one-line reason for an exception."""
    exc = unwrap(exc)
    return str(exc) or type(exc).__name__


class Supervisor:
    """Runs components in one nursery, restarts crashed ones, handles signals.

    Owns the :class:`Shutdown` object and the signal receiver. :meth:`run` returns when every
    component has stopped after a stop request (or was cancelled by a second signal / the
    grace period), and raises :class:`ComponentStartError` if a component cannot start.
    """

    def __init__(
        self,
        components: Sequence[Component],
        settings: LiveSettings,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        on_ready: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        on_reload: Callable[[ReloadResult], None] | None = None,
        on_reloading: Callable[[], None] | None = None,
    ) -> None:
        self.components = tuple(components)
        self.settings = settings
        self.shutdown = Shutdown(grace_seconds)  # the process-wide request, set first
        self._stops = {c.name: Shutdown(grace_seconds) for c in components}
        self._done = {c.name: trio.Event() for c in components}
        self._begun: set[str] = set()
        self.ready = trio.Event()
        self.restarts: dict[str, int] = {c.name: 0 for c in components}
        self._on_ready = on_ready
        self._on_stop = on_stop
        self._on_reload = on_reload
        self._on_reloading = on_reloading  # before the file is read (systemd: RELOADING=1)
        self._components_scope = trio.CancelScope()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._handle_signals)
                with self._components_scope:
                    await self._run_components()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Surface the start failure itself, not the groups trio wraps it in.
            failed = unwrap(group)
            if isinstance(failed, ComponentStartError):
                raise failed from None
            raise
        log.info("stopped")

    async def _run_components(self) -> None:
        async with trio.open_nursery() as components:
            for component in self.components:
                if self.shutdown.requested.is_set():
                    break
                self._begun.add(component.name)
                await components.start(self._supervise, component)
            self.ready.set()
            log.info(
                "all components ready: %s", ", ".join(c.name for c in self.components) or "(none)"
            )
            if self._on_ready:
                self._on_ready()

    def request_stop(self) -> None:
        """Begin a graceful stop (what the first SIGTERM/SIGINT does)."""
        if self.shutdown.requested.is_set():
            return
        log.info("stopping: grace period %.1f s", self.shutdown.grace_seconds)
        self.shutdown.request()
        if self._on_stop:
            self._on_stop()
        trio.lowlevel.spawn_system_task(self._stop_in_order)
        trio.lowlevel.spawn_system_task(self._enforce_grace)

    def stop_now(self) -> None:
        """Cancel every component at once (what a second signal does)."""
        log.warning("stopping at once")
        self.shutdown.request()
        for stop in self._stops.values():
            stop.request()
        self._components_scope.cancel()

    async def _stop_in_order(self) -> None:
        for component in reversed(self.components):
            if component.name in self._begun:
                self._stops[component.name].request()
                await self._done[component.name].wait()

    async def _enforce_grace(self) -> None:
        await trio.sleep(self.shutdown.grace_seconds)
        if not self._components_scope.cancel_called:
            log.warning("grace period over: cancelling what still runs")
            self._components_scope.cancel()

    async def _handle_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Owns the signal receiver: SIGTERM/SIGINT stop (twice: at once), SIGHUP reloads."""
        bind(component="supervisor")
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if self._on_reloading:
                        self._on_reloading()
                    result = await self.settings.reload()
                    if self._on_reload:
                        self._on_reload(result)
                elif self.shutdown.requested.is_set():
                    self.stop_now()
                else:
                    self.request_stop()

    async def _supervise(self, component: Component, *, task_status: trio.TaskStatus[None]) -> None:
        """Run one component until it stops after a stop request, restarting it on crashes."""
        bind(component=component.name)
        try:
            await self._keep_running(component, task_status)
        finally:
            self._done[component.name].set()

    async def _keep_running(self, component: Component, task_status: trio.TaskStatus[None]) -> None:
        shutdown = self._stops[component.name]
        backoff = RestartBackoff()
        ever_started = False
        while True:
            started_at = math.inf
            crash: BaseException | None = None
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(component.run, shutdown)
                    started_at = trio.current_time()
                    if not ever_started:
                        ever_started = True
                        task_status.started()
            except Exception as exc:
                if not ever_started:
                    raise ComponentStartError(component.name, describe(exc)) from exc
                crash = exc
            crash = unwrap(crash) if crash is not None else None
            if shutdown.requested.is_set():
                if crash is not None:
                    log.error("crashed while stopping", exc_info=crash)
                return
            delay = backoff.delay(trio.current_time() - started_at)
            if crash is not None:
                log.error("crashed; restarting in %.1f s", delay, exc_info=crash)
            else:
                log.error("returned without a stop request; restarting in %.1f s", delay)
            if not await backoff.wait(delay, shutdown):
                return
            self.restarts[component.name] += 1
