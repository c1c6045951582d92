"""Delivery status notifications to the envelope sender (RFC 3461 §6, RFC 3464).

:meth:`Bounces.settled` is called by the delivery attempt (``attempt.py`` ``_settle``) once
per attempt, before the message is moved on, with the envelope as it will be written and
what the attempt decided:

- ``failed`` (the message goes to ``failed/``): one DSN, ``Action: failed``, for every
  recipient refused permanently (in any attempt) or given up on after the last retry, that
  did not say ``NOTIFY=NEVER`` (or a NOTIFY without FAILURE); the envelope remembers it
  (``bounced``), so an operator's retry that fails again sends no second one;
- in every outcome, recipients delivered in this attempt that asked for ``NOTIFY=SUCCESS``:
  ``Action: delivered`` (the ``local`` relay) or ``relayed`` (handed to an upstream that does
  not offer DSN); an upstream that offers DSN was given the parameters and reports itself;
- ``retried``, when ``bounces.delay_warning_after_seconds`` is set and the message has
  waited that long: one ``Action: delayed`` notice, once per message (``delay_warned``).

The recipients of one call share one report, so a message gets exactly one DSN when it
fails, however many log rows its failure writes.

A report with ``Action: failed`` recipients, once written, is also handed to ``bounced``
(the composition root wires the webhook sender's ``bounced``): one ``bounced`` webhook event
about the original message — its id and sender, the failed recipients, their diagnostics —
and the DSN's spool id. The message log gets no row for it: it keeps the original's
``failed`` rows and the DSN's own ``received`` row.

Loop safety (RFC 3461 §6.2, RFC 5321 §4.5.5): nothing is ever sent about a message from the
null reverse path, about a DSN Dispatch made (source ``bounce``), or about a message whose
header says it is a delivery report (``multipart/report; report-type=delivery-status``). The
DSN itself is sent from ``<>`` to the original sender.

Durability: the DSN is written with the spool's own write API (fsynced into ``incoming/``,
source ``bounce``, tag ``bounce``) before the original is moved on, and is then routed and
delivered like any message. A crash between the two sends the DSN again after restart (a
duplicate, never a loss). A DSN that cannot be written (full disk) is logged and the original
is moved on regardless: the failure is in ``failed/`` and the log either way.

Owns no task and no file beyond the spool message it writes during the call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Final, Literal

import attrs
import trio

from dispatch.config.settings import Settings
from dispatch.delivery.dsn_report import Action, RecipientReport, ReportFacts, build_report
from dispatch.monitoring.stats import Stats
from dispatch.spool import Envelope, Spool, SpoolWriteError
from dispatch.storage.records import MessageEvent

log = logging.getLogger("dispatch.bounces")

Settled = Literal["delivered", "failed", "retried"]
HEADER_BYTES: Final = 262_144  # read of the original when only its headers are returned
BOUNCE_TAG: Final = "bounce"

Bounced = Callable[[MessageEvent, str], None]
"""Told of each failure notice queued: the failure it reports about the original message
(a ``failed`` event that is not a log row: message id, sender, the failed recipients, the
diagnostics in ``response``) and the DSN's spool id. Must not block or raise."""


def _read(path: str, limit: int | None) -> bytes:
    with open(path, "rb") as file:  # a worker thread's plain read
        return file.read() if limit is None else file.read(limit)


def is_delivery_report(original: bytes) -> bool:
    """Does the header section say this is a DSN (RFC 6522 multipart/report of type
    delivery-status)? Read without a full parse: a broken header means "no"."""
    head = original.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].lower()
    unfolded = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").replace(b"\n ", b" ")
    for line in unfolded.splitlines():
        if line.startswith(b"content-type:") and b"multipart/report" in line:
            return b"delivery-status" in line
    return False


def _is_local(settings: Settings, relay: str | None) -> bool:
    """Did ``relay`` keep the message here (the ``local`` relay): delivered, not relayed."""
    try:
        return relay is not None and settings.relay(relay).kind == "local"
    except KeyError:  # removed by a reload since
        return False


class Bounces:
    """Writes the DSNs of settled attempts into the spool (see the module docstring)."""

    def __init__(
        self,
        spool: Spool,
        settings: Callable[[], Settings],
        stats: Stats,
        record: Callable[[MessageEvent], None],
        *,
        bounced: Bounced | None = None,
    ) -> None:
        self._spool = spool
        self._settings = settings
        self._stats = stats
        self._record = record
        self._bounced = bounced

    async def settled(
        self, envelope: Envelope, outcome: Settled, delivered_now: Iterable[str]
    ) -> Envelope:
        """Spool the DSN this attempt calls for, if any; the envelope to write (its
        ``delay_warned`` set once a delay notice went out)."""
        settings = self._settings()
        if not settings.bounces.enabled or envelope.mail_from == "":
            return envelope
        if envelope.source == "bounce":
            return envelope
        reports = [*self._successes(envelope, delivered_now, settings)]
        if outcome == "failed" and not envelope.bounced:
            failures = [*self._failures(envelope)]
            if failures:
                reports.extend(failures)
                envelope = attrs.evolve(envelope, bounced=True)
        elif outcome == "retried" and self._delay_due(envelope, settings):
            reports.extend(self._delays(envelope))
            envelope = attrs.evolve(envelope, delay_warned=True)
        if reports:
            order = {recipient: i for i, recipient in enumerate(envelope.recipients)}
            reports.sort(key=lambda report: order.get(report.recipient, 0))
            await self._send(envelope, reports, settings)
        return envelope

    # --- who is reported -------------------------------------------------------------------

    @staticmethod
    def _successes(
        envelope: Envelope, delivered_now: Iterable[str], settings: Settings
    ) -> Iterable[RecipientReport]:
        for recipient in dict.fromkeys(delivered_now):
            result = envelope.recipient_results.get(recipient)
            dsn = envelope.dsn_of(recipient)
            if result is None or result.dsn_passed or not dsn.wants("SUCCESS"):
                continue
            action: Action = "delivered" if _is_local(settings, result.relay) else "relayed"
            yield RecipientReport(
                recipient=recipient,
                action=action,
                response=result.response,
                orcpt=dsn.orcpt,
                remote_mta=result.remote_mta,
                last_attempt=result.at,
            )

    @staticmethod
    def _failures(envelope: Envelope) -> Iterable[RecipientReport]:
        for recipient in dict.fromkeys(envelope.recipients):
            dsn = envelope.dsn_of(recipient)
            if not dsn.wants("FAILURE"):
                continue
            result = envelope.recipient_results.get(recipient)
            if result is not None and result.status == "failed":
                yield RecipientReport(
                    recipient=recipient,
                    action="failed",
                    response=result.response,
                    orcpt=dsn.orcpt,
                    remote_mta=result.remote_mta,
                    last_attempt=result.at,
                )
            elif result is None:  # still pending: the retries ran out
                deferral = envelope.deferrals.get(recipient)
                yield RecipientReport(
                    recipient=recipient,
                    action="failed",
                    response=deferral.response if deferral else (envelope.last_error or ""),
                    orcpt=dsn.orcpt,
                    last_attempt=deferral.at if deferral else None,
                    gave_up=True,
                )

    @staticmethod
    def _delay_due(envelope: Envelope, settings: Settings) -> bool:
        after = settings.bounces.delay_warning_after_seconds
        return (
            after > 0 and not envelope.delay_warned and time.time() - envelope.received_at >= after
        )

    @staticmethod
    def _delays(envelope: Envelope) -> Iterable[RecipientReport]:
        for recipient in dict.fromkeys(envelope.pending_recipients):
            dsn = envelope.dsn_of(recipient)
            if not dsn.wants("DELAY"):
                continue
            deferral = envelope.deferrals.get(recipient)
            yield RecipientReport(
                recipient=recipient,
                action="delayed",
                response=deferral.response if deferral else (envelope.last_error or ""),
                orcpt=dsn.orcpt,
                last_attempt=deferral.at if deferral else None,
            )

    # --- writing ---------------------------------------------------------------------------

    async def _send(
        self, envelope: Envelope, reports: list[RecipientReport], settings: Settings
    ) -> None:
        path = str(self._spool.message_path(envelope.id))
        full = envelope.mail_dsn.ret == "FULL"
        try:
            original = await trio.to_thread.run_sync(_read, path, None if full else HEADER_BYTES)
        except OSError as exc:
            log.error("%s: no DSN: cannot read the message (%s)", envelope.id, exc)
            return
        if is_delivery_report(original):
            log.info("%s: no DSN about a delivery report (loop safety)", envelope.id)
            return
        facts = ReportFacts(
            reporting_mta=settings.bounces.reporting_mta or settings.listener.server_name,
            original_sender=envelope.mail_from,
            message_id=envelope.id,
            arrived_at=envelope.received_at,
            envid=envelope.mail_dsn.envid,
            ret=envelope.mail_dsn.ret,
            now=time.time(),
        )
        report = build_report(facts, reports, original)
        try:
            async with self._spool.begin() as incoming:
                await incoming.write(report)
                dsn = await incoming.commit(
                    mail_from="",
                    recipients=(envelope.mail_from,),
                    source="bounce",
                    peer_ip=None,
                    tags=(BOUNCE_TAG,),
                )
        except SpoolWriteError as exc:
            self._stats.spool_writes.add("error")
            log.error("%s: the DSN to %s was not written: %s", envelope.id, envelope.mail_from, exc)
            return
        self._stats.spool_writes.add("ok")
        self._stats.dsn_queued.add()
        actions = sorted({r.action for r in reports})
        log.info(
            "%s: DSN %s (%s, %d recipient(s)) queued to %s",
            envelope.id,
            dsn.id,
            "/".join(actions),
            len(reports),
            envelope.mail_from,
        )
        self._record(
            MessageEvent(
                message_id=dsn.id,
                event="received",
                at=dsn.received_at,
                source=None,  # the log's sources are smtp and api; the tag says "bounce"
                sender="",
                recipients=dsn.recipients,
                subject=f"DSN ({'/'.join(actions)}) for {envelope.id}",
                size=dsn.size,
                tags=dsn.tags,
            )
        )
        failed = [report for report in reports if report.action == "failed"]
        if failed and self._bounced is not None:
            self._bounced(_failure(envelope, failed, dsn.received_at), dsn.id)


def _failure(envelope: Envelope, failed: list[RecipientReport], at: float) -> MessageEvent:
    """What a ``bounced`` event says about the original: the failed recipients, their
    distinct diagnostics, and the relay and route when they all had the same one."""
    recipients = [report.recipient for report in failed]
    places = {_place(envelope, recipient) for recipient in recipients}
    relay, route = places.pop() if len(places) == 1 else (None, None)
    return MessageEvent(
        message_id=envelope.id,
        event="failed",
        at=at,
        source=None if envelope.source == "bounce" else envelope.source,
        sender=envelope.mail_from,
        recipients=recipients,
        size=envelope.size,
        tags=envelope.tags,
        relay=relay,
        route=route,
        attempt=envelope.attempts,
        response="; ".join(dict.fromkeys(report.response for report in failed)),
    )


def _place(envelope: Envelope, recipient: str) -> tuple[str | None, str | None]:
    """The relay and route of a recipient's last outcome (a result, else a deferral)."""
    known = envelope.recipient_results.get(recipient) or envelope.deferrals.get(recipient)
    return (known.relay, known.route) if known is not None else (None, None)
