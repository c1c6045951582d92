"""An intake worker process: SMTP sessions on another core (``listener.processes`` > 1).

Theory of operation
-------------------
The main process binds the SMTP ports and starts ``python -m dispatch intake-worker`` with
the listening sockets and one end of a :class:`~dispatch.intake.link.Link` inherited. The
worker accepts on the same sockets (the kernel hands each new connection to one of the
processes waiting in ``accept``, so an idle process takes more) and runs the same
:class:`~dispatch.intake.listener.SmtpListener` and sessions as the main process. It writes
messages into the spool exactly as the main process does — ``tmp/``, fsync, rename into
``incoming/``, fsync — through a :class:`~dispatch.spool.SpoolEntrance`, and only then says
``250``; the promise of SPEC §5 does not depend on which process took the connection.

It owns no other state. Over the link it receives the settings (at start and after each
reload) and sends ``("ready",)``, each committed envelope (the main process indexes it for
delivery), each message-log event (the main process writes the log) and, every second, its
counters (merged into the main process's ``/metrics`` and ``/debug/vars``).

Starting and stopping: ready once the settings arrived and the TLS context is loaded.
SIGTERM or SIGINT, or the link closing (the main process is gone), stops it like the main
listener stops: no new connections, ``421`` to open sessions, a commit in flight finishes
with its ``250``. Everything queued for the link is sent before the process exits, so the
main process learns of every message committed here; a worker killed before it could say so
is covered by :meth:`dispatch.spool.Spool.adopt_unannounced`.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
from pathlib import Path
from typing import Final

import trio

from dispatch.config.settings import Settings
from dispatch.intake.link import Link
from dispatch.intake.listener import SmtpListener
from dispatch.intake.ports import ListeningPorts
from dispatch.intake.session import IntakeContext
from dispatch.lifecycle import Shutdown
from dispatch.logs import bind
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Tracer
from dispatch.security.certs import ensure_certificate, server_context
from dispatch.security.passwords import share_among
from dispatch.security.throttle import FailureThrottle
from dispatch.spool import SpoolEntrance
from dispatch.spool.spool import DEFAULT_MAX_THREADS

log = logging.getLogger("dispatch.smtp")

STATS_INTERVAL: Final = 1.0
DRAIN_GRACE: Final = 30.0  # the main process kills a worker that takes longer (its grace)


async def run_worker(number: int, link_fd: int, listen_fds: list[int]) -> None:
    """The Trio main function of intake worker ``number`` (see the module docstring)."""
    bind(component="smtp", worker=str(number))
    link = Link(trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=link_fd))))
    first = await link.receive()
    if not isinstance(first, Settings):
        raise RuntimeError(f"intake worker: expected the settings first, got {first!r}")
    settings = first
    outbox_send, outbox = trio.open_memory_channel[tuple[object, ...]](math.inf)
    stats = Stats()
    share_among(settings.listener.processes)  # password checks: this process's share
    files = await trio.to_thread.run_sync(ensure_certificate, settings)
    context = IntakeContext(
        settings=lambda: settings.listener,
        spool=SpoolEntrance(
            Path(settings.spool.directory),
            lambda envelope: outbox_send.send_nowait(("committed", envelope.to_json())),
            limiter=trio.CapacityLimiter(DEFAULT_MAX_THREADS),
        ),
        stats=stats,
        auth_throttle=FailureThrottle(),
        tls=server_context(files),
        record=lambda event: outbox_send.send_nowait(("event", event)),
        tracer=Tracer(),
    )
    listeners = [
        trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
        for fd in listen_fds
    ]
    ports = ListeningPorts(configured=(), listening=())  # the main process reports them
    listener = SmtpListener(context, ports, processes=settings.listener.processes)
    shutdown = Shutdown(grace_seconds=DRAIN_GRACE)

    async def take_settings() -> None:
        nonlocal settings
        while (message := await link.receive()) is not None:
            if isinstance(message, Settings):
                settings = message
        log.warning("the main process has gone; stopping")
        shutdown.request()

    async def ship_stats() -> None:
        while True:
            await trio.sleep(STATS_INTERVAL)
            outbox_send.send_nowait(("stats", stats.take()))

    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                shutdown.request()

    async with trio.open_nursery() as outer:
        outer.start_soon(_forward, outbox, link)  # ends once the outbox is closed and empty
        async with trio.open_nursery() as helpers:
            helpers.start_soon(take_settings)
            helpers.start_soon(ship_stats)
            helpers.start_soon(stop_on_signal)
            outbox_send.send_nowait(("ready",))
            await listener.serve(listeners, shutdown)
            helpers.cancel_scope.cancel()
        outbox_send.send_nowait(("stats", stats.take()))
        outbox_send.close()
    await link.aclose()


async def _forward(outbox: trio.MemoryReceiveChannel[tuple[object, ...]], link: Link) -> None:
    """The only sender on the link: never cancelled half-way through a frame.

    Sends whatever has queued up as one frame (a list): under load one write carries the
    commits and events of many sessions.
    """
    async with outbox:
        async for message in outbox:
            batch = [message]
            while True:
                try:
                    batch.append(outbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            try:
                await link.send(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the main process has gone; start-up will find the messages
