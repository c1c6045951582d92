"""The Relays page: each relay's state, a test message, and a live log of its attempts.

- ``GET /relays``: every configured relay with its kind and target, its state (``ok``,
  ``failing``, ``suspended``, ``idle``: see :func:`relay_state`), messages in flight,
  delivered and failed since start and today, its last success and last error.
- ``GET /relays/<name>``: one relay, the "send a test message" form, and its log: the message
  log's rows written by its attempts (delivered, retried, failed, with the upstream's reply;
  ``LogQueries.relay_events``) and its recent dialogues with the upstream (the
  ``relay.dialogue`` traces the tracer still holds). ``GET /relays/<name>/log`` is that log
  alone, which ``live.js`` polls (``204`` while nothing changed).
- ``POST /relays/<name>/test``: a test message spooled and forced through this relay
  (:func:`dispatch.delivery.forced.send_through`); the page shows the upstream's reply.
  Audit-logged (the recipient's domain only).

The state and the last success and error come from memory (the delivery attempt's
``RelayOutcomes``, the relay set's suspensions): they start empty with the daemon. The log
comes from the database and survives restarts.
"""

from __future__ import annotations

import time
from typing import Any, Final

import attrs
from quart import Blueprint, Response, request

from dispatch.config.render import redact_url_credentials
from dispatch.config.settings import (
    LocalRelay,
    MailgunRelay,
    MxRelay,
    PostmarkRelay,
    RelaySettings,
    SmtpRelay,
)
from dispatch.dashboard import formats
from dispatch.dashboard.notices import LIVE_VERSION_HEADER, Notice, Notices, actor, address_problem
from dispatch.dashboard.render import redirect_to, render_page
from dispatch.dashboard.sources import DashboardSources
from dispatch.delivery.forced import relay_test_message, send_through
from dispatch.monitoring.delivery_health import RelayRecord
from dispatch.monitoring.traces import Trace
from dispatch.spool import SpoolError
from dispatch.storage import DatabaseUnavailableError, MessageEvent, audit

LOG_ROWS: Final = 30
DIALOGUES: Final = 10


@attrs.frozen
class RelayStatus:
    """One relay as the page shows it."""

    name: str
    kind: str
    target: str
    state: str  # ok | failing | suspended | idle
    why: str
    inflight: int
    delivered: int
    failed: int
    delivered_today: int
    failed_today: int
    last_success_at: float | None
    last_attempt_at: float | None
    last_error: str
    default: bool
    routes: tuple[int, ...]  # positions in `routes` naming this relay


def target_of(relay: RelaySettings) -> str:
    """Where a relay sends mail, without any secret."""
    if isinstance(relay, SmtpRelay):
        return f"{relay.host}:{relay.port} (TLS {relay.tls})"
    if isinstance(relay, LocalRelay):
        return "the Local inbox (captured/)"
    if isinstance(relay, MxRelay):
        return f"each domain's MX hosts, port {relay.port}"
    if isinstance(relay, MailgunRelay | PostmarkRelay):
        return redact_url_credentials(relay.base_url)
    return redact_url_credentials(relay.base_url) or f"Amazon SES in {relay.region}"


def relay_state(suspended: str | None, record: RelayRecord | None) -> tuple[str, str]:
    """``(state, why)``: suspended, failing (the latest attempt failed, none succeeded
    since), ok, or idle (no attempt since start)."""
    if suspended:
        return "suspended", suspended
    if record is None or record.last_attempt_at is None:
        return "idle", "no attempt since the daemon started"
    if record.failed_attempts and (
        record.last_success_at is None or record.last_success_at < record.last_attempt_at
    ):
        return "failing", record.last_error
    return "ok", ""


def _wall(monotonic_at: float | None) -> float | None:
    """A ``time.monotonic()`` reading as Unix time."""
    return None if monotonic_at is None else time.time() - (time.monotonic() - monotonic_at)


def relay_statuses(sources: DashboardSources) -> list[RelayStatus]:
    settings = sources.settings.current
    clients = {relay.name: relay for relay in sources.relays.all()}
    suspensions = sources.relays.suspensions()
    today = sources.figures.relay_counts_today()
    default = settings.default_relay or (
        settings.relays[0].name if len(settings.relays) == 1 else ""
    )
    statuses = []
    for relay in settings.relays:
        client = clients.get(relay.name)
        record = sources.attempt.outcomes.get(relay.name)
        state, why = relay_state(suspensions.get(relay.name), record)
        statuses.append(
            RelayStatus(
                name=relay.name,
                kind=relay.kind,
                target=target_of(relay),
                state=state,
                why=why,
                inflight=client.inflight if client else 0,
                delivered=client.delivered if client else 0,
                failed=client.failed if client else 0,
                delivered_today=today.get(relay.name, {}).get("delivered", 0),
                failed_today=today.get(relay.name, {}).get("failed", 0),
                last_success_at=_wall(record.last_success_at) if record else None,
                last_attempt_at=_wall(record.last_attempt_at) if record else None,
                last_error=record.last_error if record else "",
                default=relay.name == default,
                routes=tuple(
                    i for i, rule in enumerate(settings.routes) if relay.name in rule.relay
                ),
            )
        )
    return statuses


def dialogues(sources: DashboardSources, name: str) -> list[Trace]:
    """The newest ``relay.dialogue`` traces of this relay still held (running ones first)."""
    family = sources.tracer.families["relay.dialogue"]
    prefix = f"relay {name} "
    mine = [trace for trace in family.stored() if trace.title.startswith(prefix)]
    mine.sort(key=lambda trace: (trace.finished, -trace.started_at))
    return mine[:DIALOGUES]


async def relay_log(sources: DashboardSources, name: str) -> dict[str, Any]:
    rows: list[MessageEvent] = []
    unavailable = None
    try:
        rows = await sources.store.queries.relay_events(name, LOG_ROWS)
    except DatabaseUnavailableError as exc:
        unavailable = str(exc) or type(exc).__name__
    traces = dialogues(sources, name)
    newest_row = rows[0].event_id if rows else ""
    version = f"{newest_row}.{'.'.join(f'{t.id}:{t.event_count}' for t in traces)}"
    return {"rows": rows, "traces": traces, "unavailable": unavailable, "version": version}


def _configured(sources: DashboardSources, name: str) -> bool:
    return any(relay.name == name for relay in sources.settings.current.relays)


def _unknown(name: str) -> Response:
    return Response(
        f"No relay {name!r} is configured (see [[relays]] in the configuration file).",
        status=404,
        content_type="text/plain; charset=utf-8",
    )


def register(bp: Blueprint, sources: DashboardSources) -> None:
    notices = Notices()

    @bp.get("/relays")
    async def relays() -> Response:
        return await render_page(
            "dashboard/relays.html",
            title="Relays",
            active="relays",
            fmt=formats,
            statuses=relay_statuses(sources),
        )

    @bp.get("/relays/<name>")
    async def relay(name: str) -> Response:
        if not _configured(sources, name):
            return _unknown(name)
        (status,) = [s for s in relay_statuses(sources) if s.name == name]
        return await render_page(
            "dashboard/relay.html",
            title=f"Relay {name}",
            active="relays",
            fmt=formats,
            notice=notices.take(),
            relay=status,
            log=await relay_log(sources, name),
            form=request.args,
        )

    @bp.get("/relays/<name>/log")
    async def relay_log_fragment(name: str) -> Response:
        if not _configured(sources, name):
            return _unknown(name)
        log = await relay_log(sources, name)
        if request.args.get("version") == log["version"]:
            return Response("", status=204)
        response = await render_page(
            "dashboard/relay_log.html", title=name, fmt=formats, name=name, log=log
        )
        response.headers[LIVE_VERSION_HEADER] = log["version"]
        return response

    @bp.post("/relays/<name>/test")
    async def relay_test(name: str) -> Response:
        if not _configured(sources, name):
            return _unknown(name)
        form = await request.form
        notice = await send_test(sources, name, form.get("from", "").strip(), form.get("to", ""))
        return redirect_to(f"/relays/{name}?notice={notices.keep(notice)}#test")


async def send_test(sources: DashboardSources, relay: str, sender: str, to: str) -> Notice:
    """Send a test message from ``sender`` to ``to`` through ``relay``; what happened."""
    recipient = to.strip()
    problems = [p for p in (address_problem(sender), address_problem(recipient)) if p]
    if problems:
        return Notice("Not sent: " + "; ".join(problems), "bad")
    try:
        outcome = await send_through(
            sources.spool,
            sources.attempt,
            relay=relay,
            body=relay_test_message(sender, recipient, relay),
            mail_from=sender,
            recipients=(recipient,),
            identity="dashboard send-test",
            tags=("send-test",),
        )
    except (SpoolError, ValueError) as exc:
        return Notice(f"Not sent: {exc}", "bad")
    domain = recipient.rpartition("@")[2]
    sources.audit(audit.relay_test_sent(relay, domain, outcome.summary, actor=actor()))
    details = [f"{kind}: {reply}" for _, kind, reply in outcome.outcomes]
    if outcome.remote_id:
        details.append(f"upstream id: {outcome.remote_id}")
    title = f"Test message through {relay} to {recipient}: {outcome.summary}"
    return Notice(title, "ok" if outcome.delivered else "bad", tuple(details))
