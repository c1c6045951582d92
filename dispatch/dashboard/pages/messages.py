"""The Message log (``/messages``): search every message by address, subject, status, tag,
date, relay, source and API key; one message's whole story; its raw bytes.

Routes:

- ``GET /messages``: the search form and a page of results, newest first (keyset pages:
  ``?before=`` / ``?after=`` cursors); ``status=denied`` lists refused connections instead.
  The answer carries ``Server-Timing: search;dur=<ms>``, the database's time for the search;
- ``GET /messages/<id>``: the timeline, envelope and headers (``message_detail.py``);
- ``GET /messages/<id>/raw``: the message exactly as received, as ``<id>.eml``, while a copy
  exists (the spool, or the Local inbox); ``404`` saying so when it is gone.

The searches are :mod:`dispatch.storage.message_search`; the form is
:mod:`dispatch.dashboard.message_form`. Reads only: nothing here changes anything.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Final

import trio
from quart import Blueprint, Response, request

from dispatch.dashboard import formats
from dispatch.dashboard.message_detail import (
    Body,
    open_body,
    read_headers,
    recipients,
    spooled,
    timeline,
)
from dispatch.dashboard.message_form import STATUS_CHOICES, SearchForm, parse_form
from dispatch.dashboard.render import redirect_to, render_page
from dispatch.dashboard.sources import DashboardSources
from dispatch.dashboard.statuses import BADGES, STATUS_LABELS, status_label
from dispatch.spool.ids import is_valid_id
from dispatch.storage.database import DatabaseUnavailableError
from dispatch.storage.message_search import (
    MessageRow,
    Page,
    denied_page,
    search_messages,
)
from dispatch.storage.records import MessageEvent

CHUNK: Final = 64 * 1024


def server_timing(seconds: float) -> str:
    return f'search;dur={seconds * 1000:.1f};desc="message log query"'


def register(bp: Blueprint, sources: DashboardSources) -> None:
    database = sources.store.database
    spool = sources.spool

    def label(row: MessageRow) -> str:
        return status_label(spool, row.received.message_id, row.latest)

    async def run_search(form: SearchForm) -> Page[MessageRow] | Page[MessageEvent]:
        if form.denied:
            wanted = form.wanted
            return await denied_page(
                database,
                since=wanted.since,
                until=wanted.until,
                source=wanted.source,
                before=form.before,
                after=form.after,
            )
        return await search_messages(database, form.wanted, before=form.before, after=form.after)

    @bp.get("/messages")
    async def messages() -> Response:
        form = parse_form(request.args)
        if form.go_to is not None:
            return redirect_to(f"/messages/{form.go_to}")
        results: Page[Any] | None = None
        error = None
        took = 0.0
        if not form.problems:
            started = time.perf_counter()
            try:
                results = await run_search(form)
            except DatabaseUnavailableError as exc:
                error = str(exc) or "the database is unavailable"
            took = time.perf_counter() - started
        response = await render_page(
            "dashboard/messages.html",
            title="Message log",
            active="messages",
            status=400 if form.problems else 200,
            form=form,
            results=results,
            error=error,
            took_ms=took * 1000,
            status_choices=STATUS_CHOICES,
            relay_names=[relay.name for relay in sources.settings.current.relays],
            label=label,
            badges=BADGES,
            fmt=formats,
        )
        response.headers["Server-Timing"] = server_timing(took)
        return response

    @bp.get("/messages/<message_id>")
    async def message_detail(message_id: str) -> Response:
        if not is_valid_id(message_id):
            return await not_found(message_id)
        error: str | None = None
        try:
            history = await sources.store.queries.message_history(message_id)
        except DatabaseUnavailableError as exc:
            history, error = [], str(exc) or "the database is unavailable"
        in_spool = spooled(spool, message_id)
        if not history and in_spool is None and error is None:
            return await not_found(message_id)
        body = await open_body(spool, message_id)
        headers, cut = ("", False)
        if body is not None:
            try:
                headers, cut = await read_headers(body)
            finally:
                body.file.close()
        received = next((e for e in history if e.event == "received"), None)
        latest = history[-1].event if history else "received"
        return await render_page(
            "dashboard/message.html",
            title=f"Message {message_id}",
            active="messages",
            message_id=message_id,
            steps=timeline(history, in_spool),
            received=received,
            envelope=None if in_spool is None else in_spool[1],
            recipients=[] if in_spool is None else recipients(in_spool[1]),
            message_status=status_label(spool, message_id, latest),
            badges=BADGES,
            labels=STATUS_LABELS,
            body=body,
            headers=headers,
            headers_cut=cut,
            error=error,
            fmt=formats,
        )

    @bp.get("/messages/<message_id>/raw")
    async def message_raw(message_id: str) -> Response:
        body = await open_body(spool, message_id) if is_valid_id(message_id) else None
        if body is None:
            return await not_found(message_id, raw=True)
        response = Response(stream(body), mimetype="message/rfc822")
        response.headers["Content-Disposition"] = f'attachment; filename="{message_id}.eml"'
        response.headers["Content-Length"] = str(body.size)
        return response

    async def not_found(message_id: str, *, raw: bool = False) -> Response:
        return await render_page(
            "dashboard/message_gone.html",
            title="Message not found" if not raw else "The message's bytes are gone",
            active="messages",
            status=404,
            message_id=message_id,
            raw=raw,
            valid=is_valid_id(message_id),
        )


async def stream(body: Body) -> AsyncIterator[bytes]:
    """The body's bytes in chunks, each read in a worker thread; closes the file at the end
    (or when the download is abandoned)."""
    try:
        while chunk := await trio.to_thread.run_sync(body.file.read, CHUNK):
            yield chunk
    finally:
        body.file.close()
