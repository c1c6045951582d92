"""An intake worker process: SMTP sessions on another core (``listener.processes`` > 1).

Theory of operation
-------------------
The main process binds the SMTP ports and starts ``python -m dispatch intake-worker`` with
the listening sockets, one end of a :class:`~dispatch.intake.link.Link` and the memory file
of the connections each worker holds inherited. The worker accepts on the same sockets (every
worker wakes to a new connection and takes what it lacks of its share of all the connections
the workers hold, ``intake/balance.py`` and :meth:`SmtpListener._batch`; the main process does
not accept on them) and runs the same :class:`~dispatch.intake.listener.SmtpListener` and
sessions as the main process does with ``listener.processes = 1``. It writes messages into
the spool exactly as the main process does — ``tmp/``, then renamed into ``incoming/`` and
fsynced (``spool/writer.py``) — through a :class:`~dispatch.spool.SpoolEntrance`, and only
then says ``250``; the promise of SPEC §5 does not depend on which process took the
connection. It runs :data:`NICENESS` nicer than the main process, which keeps the ops port
responsive when intake fills every core, and with ``listener.pin_processes`` on one core of
its own (:func:`pin_to_core`), so that its commits' hand-offs to their writer threads stay on
that core. While it keeps that core busy it runs as a batch process
(``intake/batch_policy.py``).

Its sessions keep no traces (``monitoring/untraced.py``): it serves no monitoring page that
could show them; the main process traces each message it queued from its first delivery
attempt on.

It owns no other state. Over the link (typed messages, ``intake/link.py``) it receives
:class:`~dispatch.intake.link.Start` — the listener settings, the spool directory and the
certificate files — and :class:`~dispatch.intake.link.ListenerChanged` whenever a reload
changes ``listener.*`` (the main process pushes it at once; the next connection sees it),
and :class:`~dispatch.intake.link.SuppressionChanged` with the addresses its sessions refuse at
RCPT (``intake/suppression.py``). It sends ``Ready``, ``Committed`` for each envelope it wrote
(the main process indexes it for delivery, and records the message's ``received`` event that
rides in it), ``Logged`` for each other message-log event (the main process writes the log)
and, every second, ``Counters`` (merged into the main process's ``/metrics`` and
``/debug/vars``). It is never handed what it does not need: no relay credentials, no
database URL.

Starting and stopping: ready once ``Start`` arrived and the TLS context is loaded. SIGTERM or
SIGINT, or the link closing or breaking (the main process is gone, or sent something that is
not a valid message), stops it like the main listener stops: no new connections, ``421`` to
open sessions, a commit in flight finishes with its ``250``. Everything queued for the link
is sent before the process exits, so the main process learns of every message committed here;
a worker killed before it could say so is covered by
:meth:`dispatch.spool.Spool.adopt_unannounced`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import attrs
import trio

from dispatch.config.settings import ListenerSettings
from dispatch.intake import records
from dispatch.intake.balance import OpenCounts
from dispatch.intake.batch_policy import follow_load
from dispatch.intake.link import (
    TO_WORKER,
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
    ToWorker,
)
from dispatch.intake.listener import SmtpListener
from dispatch.intake.ports import ListeningPorts
from dispatch.intake.session import IntakeContext
from dispatch.intake.suppression import PushedSuppressions, RecipientGate
from dispatch.lifecycle import Shutdown, freeze_start_up_objects
from dispatch.logs import bind
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.untraced import UntracedTracer
from dispatch.security.certs import server_context
from dispatch.security.passwords import share_among
from dispatch.security.throttle import FailureThrottle
from dispatch.spool import Envelope, SpoolEntrance
from dispatch.spool.spool import DEFAULT_MAX_THREADS
from dispatch.storage.records import MAX_FREE_TEXT

log = logging.getLogger("dispatch.smtp")

STATS_INTERVAL: Final = 1.0
DRAIN_GRACE: Final = 30.0  # the main process kills a worker that takes longer (its grace)

NICENESS: Final = 5
"""How much nicer than the main process a worker runs (``nice(2)``).

When intake fills every core, the kernel gives the main process — supervision, ``/health``,
the API, the dashboard, delivery — about three times a worker's share of a contended core
(CFS weights 1024 and 335), so ``/health`` answers promptly while intake is at full speed
(``bench.health_ab``: p99 54.7 → 33.8 ms, intake rates unchanged, docs/intake-cpu.md). A core
nobody else wants is still the worker's whole.
"""


def yield_to_main_process() -> None:
    """Lower this process's priority by :data:`NICENESS`. Linux applies it to the calling
    thread and the threads it starts later, so call it before the first one."""
    os.nice(NICENESS)


def pin_to_core(core: int) -> None:
    """Run this process on ``core`` only (``listener.pin_processes``; the main process chose
    it, :func:`~dispatch.intake.processes.worker_core`). Linux applies it to the calling
    thread and the threads it starts later, so call it before the first one. A core that
    cannot be had (a CPU set changed since) is logged, and the kernel places the worker."""
    try:
        os.sched_setaffinity(0, {core})
    except OSError as exc:
        log.warning("intake worker not pinned to core %d (%s): it runs on any core", core, exc)


async def run_worker(number: int, link_fd: int, listen_fds: list[int], counts_fd: int) -> None:
    """The Trio main function of intake worker ``number`` (see the module docstring);
    ``counts_fd`` is the memory file of the connections each worker holds
    (``intake/balance.py``), where this one's slot is ``number - 2``."""
    bind(component="smtp", worker=str(number))
    socket_stream = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=link_fd)))
    link = Link(socket_stream, TO_WORKER)
    start = await _receive_start(link)
    listener_settings = start.listener
    outbox_send, outbox = trio.open_memory_channel[Queued](math.inf)
    stats = Stats()
    share_among(listener_settings.processes)  # password checks: this process's share
    tls = await trio.to_thread.run_sync(server_context, start.certificate)
    suppressions = PushedSuppressions()  # filled by the main process's pushes
    context = _context(start, lambda: listener_settings, tls, stats, outbox_send)
    context = attrs.evolve(
        context, refuse_recipient=RecipientGate(suppressions.lookup, lambda: True, stats)
    )
    listeners = [
        trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
        for fd in listen_fds
    ]
    ports = ListeningPorts(configured=(), listening=())  # the main process reports them
    counts = OpenCounts(counts_fd, number - 2)
    listener = SmtpListener(context, ports, processes=listener_settings.processes, counts=counts)
    shutdown = Shutdown(grace_seconds=DRAIN_GRACE)

    def apply(message: ToWorker) -> None:
        nonlocal listener_settings
        match message:
            case ListenerChanged(listener=fresh):
                listener_settings = fresh
                log.info("listener settings of the reload applied")
            case SuppressionChanged(entries):
                suppressions.replace(entries)
            case Start():
                raise LinkBroken("intake link: a second 'start' message")

    async def take_settings() -> None:
        try:
            while (batch := await link.receive()) is not None:
                for message in batch:
                    apply(message)
            log.warning("the main process has gone; stopping")
        except LinkBroken as exc:
            log.error("%s; stopping", exc)
        shutdown.request()

    async with trio.open_nursery() as outer:
        outer.start_soon(_forward, outbox, link)  # ends once the outbox is closed and empty
        async with trio.open_nursery() as helpers:
            helpers.start_soon(take_settings)
            helpers.start_soon(_ship_stats, stats, outbox_send)
            helpers.start_soon(_stop_on_signal, shutdown)
            helpers.start_soon(follow_load)  # a batch process while it fills its core
            freeze_start_up_objects()
            outbox_send.send_nowait(Ready())
            await listener.serve(listeners, shutdown)
            helpers.cancel_scope.cancel()
        outbox_send.send_nowait(Counters(stats.take()))
        outbox_send.close()
    await link.aclose()


async def _ship_stats(stats: Stats, outbox: trio.MemorySendChannel[Queued]) -> None:
    while True:
        await trio.sleep(STATS_INTERVAL)
        outbox.send_nowait(Counters(stats.take()))


async def _stop_on_signal(shutdown: Shutdown) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            shutdown.request()


def _context(
    start: Start,
    settings: Callable[[], ListenerSettings],
    tls: ssl.SSLContext,
    stats: Stats,
    outbox: trio.MemorySendChannel[Queued],
) -> IntakeContext:
    """What this process's sessions share; what they commit and log goes to the outbox."""
    return IntakeContext(
        settings=settings,
        spool=SpoolEntrance(
            Path(start.spool_directory),
            lambda envelope, encoded: outbox.send_nowait(Committed(envelope, encoded)),
            limiter=trio.CapacityLimiter(DEFAULT_MAX_THREADS),
        ),
        stats=stats,
        auth_throttle=FailureThrottle(),
        tls=tls,
        record=lambda event: outbox.send_nowait(Logged(event)),
        tracer=UntracedTracer(),  # no page shows a worker's traces
        audit=lambda entry: outbox.send_nowait(Logged(entry)),
        received=lambda envelope, subject: outbox.send_nowait(Received(envelope, subject)),
    )


async def _receive_start(link: Link[ToWorker]) -> Start:
    """The first message, which must be :class:`Start` (the worker waits for nothing else)."""
    match await link.receive():
        case [Start() as start]:
            return start
        case None:
            raise RuntimeError("intake worker: the main process closed the link before 'start'")
        case other:
            raise RuntimeError(f"intake worker: expected one 'start' message first, got {other!r}")


@attrs.frozen
class Received:
    """A session's ``received`` event (``IntakeContext.received``), queued right after the
    :class:`Committed` of its message, which carries it over the link (:func:`fold`)."""

    envelope: Envelope
    subject: str | None


type Queued = FromWorker | Received


def fold(batch: Iterable[Queued]) -> list[FromWorker]:
    """``batch`` as link messages: each :class:`Received` rides in the :class:`Committed` just
    before it, its Subject cut to what the message log keeps (a client chooses its length). A
    session queues the two with no checkpoint between, so they are always sent together; one
    that does not follow its commit would go as a :class:`Logged` event."""
    messages: list[FromWorker] = []
    for item in batch:
        if not isinstance(item, Received):
            messages.append(item)
        elif (
            messages
            and isinstance(last := messages[-1], Committed)
            and last.envelope is item.envelope
        ):
            subject = None if item.subject is None else item.subject[:MAX_FREE_TEXT]
            messages[-1] = Committed(last.envelope, last.encoded, True, subject)
        else:
            messages.append(Logged(records.received(item.envelope, subject=item.subject)))
    return messages


async def _forward(outbox: trio.MemoryReceiveChannel[Queued], link: Link[ToWorker]) -> None:
    """The only sender on the link: never cancelled half-way through a frame.

    Sends whatever has queued up as one frame (a list): under load one write carries the
    commits and events of many sessions.
    """
    async with outbox:
        async for message in outbox:
            batch: list[Queued] = [message]
            while True:
                try:
                    batch.append(outbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            try:
                await link.send(fold(batch))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the main process has gone; start-up will find the messages
