"""The relay dialogues an intake worker process runs for the main process.

Theory of operation: the main process keeps every piece of a message's state and hands a
worker only the CPU-heavy part of an attempt — reading the spooled file, DKIM signing, the
SMTP conversation with the upstream — as :class:`~dispatch.intake.link_delivery.Deliver`
(``delivery/relay_lane.py`` decides when). :class:`WorkerRelays` owns this process's
``smtp`` relay clients, built from the :class:`~dispatch.intake.link_delivery.RelaysChanged`
the main process pushes after ``Start`` and after each reload that changes the relays, the
``[[dkim]]`` keys or the HELO name; a push replaces the clients (the old ones close once
their last dialogue ends, as in :class:`~dispatch.relays.registry.RelaySet`). Each
``Deliver`` runs as its own task under its own cancel scope; its result goes back as
:class:`~dispatch.intake.link_delivery.Handed` with the token, the relay's
``relay.dialogue`` traces (kept here in a tracer of this process, replayed into the main
process's trace of the attempt) and whether the relay is suspended now.

What stays here: the relay's connection pool, its own suspension (a hung upstream fails
fast here too; the main process mirrors the state from ``Handed`` and writes the audit rows),
the DKIM signatures remembered for retries, and counters (outbound TLS, DKIM), which go to
the main process with the worker's other ``Counters``.

Starting and stopping: :meth:`WorkerRelays.run` serves until cancelled; the worker process
cancels it only after its listener drained and :meth:`WorkerRelays.drain` returned, so a
dialogue under way when SIGTERM came is finished and answered. ``Cancel`` for a token
cancels that dialogue (its connection is dropped, never reused), and it is still answered
(transient) so the token is never left open. On exit every client's idle connections QUIT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from dispatch.intake.link_delivery import Deliver, Dialogue, Handed, RelaysChanged
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import TraceLink, Tracer
from dispatch.relays.base import DeliveryRequest, DeliveryResult, Relay
from dispatch.relays.dkim_sign import DkimSigner
from dispatch.relays.registry import BrokenRelay, build_relay, suspended_because
from dispatch.relays.suspension import no_audit
from dispatch.security.dkim_keys import DkimKeyError

log = logging.getLogger("dispatch.delivery")


class _NoCapture:
    """The capture sink of a worker: it runs no ``local`` relay (those stay in the main
    process, which owns ``captured/``)."""

    async def capture(self, message_id: str) -> Path:
        raise RuntimeError("the local relay runs in the main process only")


class WorkerRelays:
    """See the module docstring. ``answer`` queues a :class:`Handed` for the link."""

    def __init__(self, stats: Stats, answer: Callable[[Handed], None]) -> None:
        self._stats = stats
        self._answer = answer
        self._tracer = Tracer()
        self._relays: dict[str, Relay] = {}
        self._retired: list[Relay] = []
        self._dkim: object = None
        self._signer: DkimSigner | None = None
        self._calls: dict[int, trio.CancelScope] = {}
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None

    def configure(self, message: RelaysChanged) -> None:
        """Build the clients ``message`` describes; configuration problems become a
        :class:`BrokenRelay` (its attempts fail transiently, saying why), as in the main
        process."""
        if message.dkim != self._dkim:
            try:
                self._signer = DkimSigner.load(message.dkim, self._stats)
            except DkimKeyError as exc:  # the main process checked the same keys at start
                log.error("DKIM keys not loaded in this worker, signing nothing: %s", exc)
                self._signer = None
            self._dkim = message.dkim
        fresh: dict[str, Relay] = {}
        for settings in message.relays:
            try:
                fresh[settings.name] = build_relay(
                    settings, _NoCapture(), message.helo_name, no_audit, self._signer
                )
            except ValueError as exc:
                log.error("relay %s cannot deliver: %s", settings.name, exc)
                fresh[settings.name] = BrokenRelay(settings.name, settings.kind, str(exc))
        self._retired.extend(self._relays.values())
        self._relays = fresh

    def deliver(self, message: Deliver) -> None:
        """Start the dialogue ``message`` asks for (answered with :class:`Handed`)."""
        assert self._nursery is not None, "run() is not running"
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        scope = self._calls[message.token] = trio.CancelScope()
        self._nursery.start_soon(self._run, message, scope)

    def cancel(self, token: int) -> None:
        """Cancel the dialogue of ``token`` (a token already answered is ignored)."""
        if (scope := self._calls.get(token)) is not None:
            scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve dialogues until cancelled; then close every client (shielded)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(60)
                    await self._close_retired()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self._close_retired()
                for relay in self._relays.values():
                    await relay.aclose()

    async def drain(self) -> None:
        """Return once no dialogue is under way."""
        await self._idle.wait()

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for relay in retired:
            await relay.aclose()

    async def _run(self, message: Deliver, scope: trio.CancelScope) -> None:
        attempt = self._tracer.start("delivery.attempt", f"{message.request.message_id} (worker)")
        request = attrs.evolve(message.request, trace=attempt)
        relay = self._relays.get(message.relay)
        result: DeliveryResult | None = None
        try:
            with scope:
                if relay is None:
                    result = DeliveryResult.all(
                        request,
                        "transient",
                        f"relay {message.relay!r} is not configured in the worker process",
                    )
                else:
                    result = await self._hand_to(relay, request)
            if result is None:  # cancelled by the main process
                result = DeliveryResult.all(request, "transient", "the attempt was cancelled")
            attempt.finish()
            self._answer(
                Handed(
                    message.token,
                    result,
                    tuple(self._dialogues(attempt.children)),
                    None if relay is None else suspended_because(relay),
                )
            )
        finally:
            del self._calls[message.token]
            if not self._calls:
                self._idle.set()

    @staticmethod
    async def _hand_to(relay: Relay, request: DeliveryRequest) -> DeliveryResult:
        try:
            return await relay.deliver(request)
        except Exception:
            log.exception("relay %s failed unexpectedly", relay.name)
            return DeliveryResult.all(
                request, "transient", f"relay {relay.name}: internal error (see the log)"
            )

    def _dialogues(self, links: list[TraceLink]) -> list[Dialogue]:
        dialogues = []
        for link in links:
            trace = self._tracer.find(link.trace_id)
            if trace is None or trace.family != "relay.dialogue":
                continue
            events = tuple((e.offset, e.message, e.is_error) for e in trace.events())
            dialogues.append(Dialogue(trace.title, trace.elapsed, events))
        return dialogues
