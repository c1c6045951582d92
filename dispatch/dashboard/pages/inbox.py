"""The Local inbox (issue 15 item 5): mail the ``local`` relay captured, read like a mail client.

Routes (all behind the gate's login; the ``POST`` ones behind its CSRF check):

- ``GET /inbox[?q=…&before=…]``: the list, newest first, with search
  (:mod:`dispatch.dashboard.captured_search`); ``GET /inbox/rows?q=…&version=…`` is the
  list's table alone, which ``inbox.js`` polls: ``204`` while the folder is unchanged, so new
  mail appears without a reload at the cost of one ``stat`` per poll.
- ``GET /inbox/<id>[?view=html|source|text|headers|raw|links][&remote=1]``: one message,
  its attachments with thumbnails, the release and delete forms.
- ``GET /inbox/<id>/frame[?remote=1]``: the HTML part for the page's sandboxed ``<iframe>``,
  under :func:`frame_policy`: no script, no plugin, no form, no request anywhere — images
  only as ``data:`` URIs (``cid:`` images are inlined) unless the operator asked for remote
  content, which then allows ``https:`` images for that view only. The ``<iframe>`` carries
  ``sandbox`` too (no ``allow-scripts``, no ``allow-same-origin``): either one alone stops
  script.
- ``GET /inbox/<id>/raw[?download=1]`` and ``GET /inbox/<id>/part/<n>[?download=1]``: the
  bytes, as ``text/plain`` or an attachment; only raster images are ever served inline, and
  every such answer has the policy ``sandbox`` (opened on its own it can do nothing).
- ``POST /inbox/<id>/delete``, ``POST /inbox/delete-all``, ``POST /inbox/<id>/release``
  (spooled again and forced through the chosen relay: :mod:`dispatch.delivery.forced`),
  each audit-logged; the result is shown after the redirect (:class:`Notices`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import trio
from quart import Blueprint, Response, request

from dispatch.dashboard import formats
from dispatch.dashboard.captured_mail import Attachment, MailView, read_frame, read_part, read_view
from dispatch.dashboard.captured_search import CapturedInbox, Query
from dispatch.dashboard.notices import (
    LIVE_VERSION_HEADER,
    Notice,
    Notices,
    actor,
    parse_addresses,
)
from dispatch.dashboard.render import redirect_to, render_page
from dispatch.dashboard.sources import DashboardSources
from dispatch.delivery.forced import ForcedOutcome, send_through
from dispatch.spool.captured import CapturedCopy, delete_captured, read_captured
from dispatch.spool.errors import CorruptEnvelopeError, SpoolError
from dispatch.spool.ids import is_valid_id
from dispatch.spool.layout import SpoolLayout
from dispatch.storage import audit

VIEWS: Final = ("html", "source", "text", "headers", "raw", "links")
MAX_RAW_SHOWN: Final = 512 << 10  # characters of the raw source printed on the page
MAX_QUERY: Final = 500


def server_timing(seconds: float) -> str:
    """``Server-Timing``: the listing's time (folder, summaries, search), for the browser's
    network panel and the scale test."""
    return f'inbox;dur={seconds * 1000:.1f};desc="captured mail listed"'


def frame_policy(*, remote: bool) -> str:
    """The captured HTML's policy: nothing runs, nothing loads but inline images and styles
    (and ``https:`` images when the operator asked for remote content)."""
    images = "data: https:" if remote else "data:"
    return (
        f"default-src 'none'; img-src {images}; style-src 'unsafe-inline'; font-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
        "sandbox allow-popups allow-popups-to-escape-sandbox"
    )


BYTES_POLICY: Final = "default-src 'none'; sandbox; frame-ancestors 'none'"


def _not_found(message_id: str) -> Response:
    return Response(
        f"No captured message {message_id} (deleted, or removed by retention.captured_days).",
        status=404,
        content_type="text/plain; charset=utf-8",
    )


def _read_message(directory: Path, message_id: str) -> tuple[CapturedCopy, MailView] | None:
    """Blocking: the copy's envelope and its parsed view; None when it is not there."""
    try:
        copy = read_captured(directory, message_id)
        if copy is None:
            return None
        return copy, read_view(copy.path)
    except (OSError, CorruptEnvelopeError):
        return None


def _raw_text(path: Path) -> tuple[str, int] | None:
    """Blocking: the start of the raw source as text, and its full size."""
    try:
        with path.open("rb") as body:
            head = body.read(MAX_RAW_SHOWN + 1)
        total = path.stat().st_size
    except OSError:
        return None
    return head[:MAX_RAW_SHOWN].decode("utf-8", "replace"), total


def _disposition(kind: str, filename: str) -> str:
    """A ``Content-Disposition`` value with the name in RFC 6266 / 5987 form."""
    ascii_name = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _bytes_response(data: bytes, content_type: str, disposition: str) -> Response:
    response = Response(data, content_type=content_type)
    response.headers["Content-Disposition"] = disposition
    response.headers["Content-Security-Policy"] = BYTES_POLICY
    return response


def _outcome_notice(outcome: ForcedOutcome, what: str) -> Notice:
    details = tuple(f"{rcpt}: {kind}: {reply}" for rcpt, kind, reply in outcome.outcomes)
    if outcome.timed_out:
        return Notice(f"{what}: {outcome.summary}", "bad")
    return Notice(f"{what}: {outcome.summary}", "ok" if outcome.delivered else "bad", details)


def register(bp: Blueprint, sources: DashboardSources) -> None:
    directory = SpoolLayout(sources.spool.directory).captured
    captured = CapturedInbox(directory)
    notices = Notices()

    async def listing(query: Query, before: str | None) -> dict[str, Any]:
        began = time.perf_counter()
        page = await captured.page(query, before)
        took = time.perf_counter() - began
        return {"listing": page, "query": query, "before": before, "took": took}

    def query_args() -> tuple[Query, str | None]:
        text = request.args.get("q", "")[:MAX_QUERY]
        before = request.args.get("before") or None
        return Query.parse(text), before if before and is_valid_id(before) else None

    @bp.get("/inbox")
    async def inbox() -> Response:
        query, before = query_args()
        context = await listing(query, before)
        response = await render_page(
            "dashboard/inbox.html",
            title="Local inbox",
            active="inbox",
            fmt=formats,
            notice=notices.take(),
            **context,
        )
        response.headers["Server-Timing"] = server_timing(context["took"])
        return response

    @bp.get("/inbox/rows")
    async def inbox_rows() -> Response:
        query, before = query_args()
        if request.args.get("version") == str(await captured.version()):
            return Response("", status=204)
        context = await listing(query, before)
        response = await render_page(
            "dashboard/inbox_rows.html", title="Local inbox", fmt=formats, **context
        )
        response.headers[LIVE_VERSION_HEADER] = str(context["listing"].version)
        response.headers["Server-Timing"] = server_timing(context["took"])
        return response

    @bp.get("/inbox/<message_id>")
    async def inbox_message(message_id: str) -> Response:
        if not is_valid_id(message_id):
            return _not_found(message_id)
        found = await trio.to_thread.run_sync(_read_message, directory, message_id)
        if found is None:
            return _not_found(message_id)
        copy, view = found
        shown = request.args.get("view", "html" if view.html is not None else "text")
        shown = shown if shown in VIEWS else "html"
        raw = await trio.to_thread.run_sync(_raw_text, copy.path) if shown == "raw" else None
        relays = [r for r in sources.settings.current.relays if r.kind != "local"]
        return await render_page(
            "dashboard/inbox_message.html",
            title=view.subject or "(no subject)",
            active="inbox",
            fmt=formats,
            notice=notices.take(),
            copy=copy,
            view=view,
            shown=shown,
            views=VIEWS,
            remote=request.args.get("remote") == "1",
            raw=raw,
            max_raw=MAX_RAW_SHOWN,
            relays=relays,
        )

    @bp.get("/inbox/<message_id>/frame")
    async def inbox_frame(message_id: str) -> Response:
        copy = await _copy(message_id)
        if copy is None:
            return _not_found(message_id)
        try:
            document = await trio.to_thread.run_sync(read_frame, copy.path)
        except OSError:
            return _not_found(message_id)
        body = document if document is not None else "<p>This message has no HTML part.</p>"
        response = Response(body, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = frame_policy(
            remote=request.args.get("remote") == "1"
        )
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return response

    @bp.get("/inbox/<message_id>/raw")
    async def inbox_raw(message_id: str) -> Response:
        copy = await _copy(message_id)
        if copy is None:
            return _not_found(message_id)
        try:
            data = await trio.to_thread.run_sync(copy.path.read_bytes)
        except OSError:
            return _not_found(message_id)
        if request.args.get("download") == "1":
            return _bytes_response(
                data, "message/rfc822", _disposition("attachment", f"{message_id}.eml")
            )
        return _bytes_response(data, "text/plain; charset=utf-8", "inline")

    @bp.get("/inbox/<message_id>/part/<int:index>")
    async def inbox_part(message_id: str, index: int) -> Response:
        copy = await _copy(message_id)
        if copy is None:
            return _not_found(message_id)
        try:
            found = await trio.to_thread.run_sync(read_part, copy.path, index)
        except OSError:
            found = None
        if found is None:
            return _not_found(f"{message_id} part {index}")
        attachment, data = found
        return _part_response(attachment, data, download=request.args.get("download") == "1")

    async def _copy(message_id: str) -> CapturedCopy | None:
        if not is_valid_id(message_id):
            return None
        try:
            return await trio.to_thread.run_sync(read_captured, directory, message_id)
        except (OSError, CorruptEnvelopeError):
            return None

    @bp.post("/inbox/<message_id>/delete")
    async def inbox_delete(message_id: str) -> Response:
        if not is_valid_id(message_id):
            return _not_found(message_id)
        removed = await delete_captured(directory, [message_id])
        captured.forget([message_id])
        sources.audit(audit.captured_deleted(removed, message_id, actor=actor()))
        title = f"Deleted {message_id}" if removed else f"{message_id} was gone already"
        return redirect_to(f"/inbox?notice={notices.keep(Notice(title))}")

    @bp.post("/inbox/delete-all")
    async def inbox_delete_all() -> Response:
        try:
            removed = await delete_captured(directory, None)
        except OSError as exc:
            notice = Notice(f"Could not delete everything: {exc}", "bad")
            return redirect_to(f"/inbox?notice={notices.keep(notice)}")
        sources.audit(audit.captured_deleted(removed, None, actor=actor()))
        plural = "" if removed == 1 else "s"
        notice = Notice(f"Deleted {removed} captured message{plural}")
        return redirect_to(f"/inbox?notice={notices.keep(notice)}")

    @bp.post("/inbox/<message_id>/release")
    async def inbox_release(message_id: str) -> Response:
        copy = await _copy(message_id)
        if copy is None:
            return _not_found(message_id)
        form = await request.form
        notice = await _release(sources, copy, form.get("relay", ""), form.get("to", ""))
        return redirect_to(f"/inbox/{message_id}?notice={notices.keep(notice)}")


async def _release(sources: DashboardSources, copy: CapturedCopy, relay: str, to: str) -> Notice:
    """Send a captured copy on through ``relay`` to the addresses of ``to``."""
    names = [r.name for r in sources.settings.current.relays if r.kind != "local"]
    if relay not in names:
        choice = ", ".join(names) or "none: configure an smtp, mx or provider relay"
        return Notice(f"Relay {relay!r} cannot release mail; relays: {choice}", "bad")
    recipients, problems = parse_addresses(to)
    if problems:
        return Notice("Not released: " + "; ".join(problems), "bad")
    message_id = copy.envelope.id
    try:
        outcome = await send_through(
            sources.spool,
            sources.attempt,
            relay=relay,
            body=copy.path,
            mail_from=copy.envelope.mail_from,
            recipients=recipients,
            identity="dashboard release",
            tags=copy.envelope.tags,
        )
    except (SpoolError, OSError, ValueError) as exc:
        return Notice(f"Not released: {exc}", "bad")
    what = f"Released {message_id} through relay {relay}"
    sources.audit(
        audit.captured_released(message_id, relay, len(recipients), outcome.summary, actor=actor())
    )
    return _outcome_notice(outcome, what)


def _part_response(attachment: Attachment, data: bytes, *, download: bool) -> Response:
    if attachment.is_image and not download:
        disposition = _disposition("inline", attachment.filename)
        return _bytes_response(data, attachment.content_type, disposition)
    return _bytes_response(
        data, "application/octet-stream", _disposition("attachment", attachment.filename)
    )
