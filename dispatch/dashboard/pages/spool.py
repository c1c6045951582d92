"""The Spool (``/spool``): what waits, what is being delivered, what failed — with the reason
and the next attempt — and the operator's retry, delete and retry-all.

Routes:

- ``GET /spool?state=&q=&relay=&page=``: the list (:mod:`dispatch.dashboard.spool_listing`);
- ``POST /spool/act``: one form for the whole table. A row's own button sends
  ``one=retry:<id>`` or ``one=delete:<id>``; the bulk buttons send ``action=retry|delete``
  with the ticked ``ids``. ``overview.js``'s sibling ``spool.js`` asks for confirmation
  before each (with the count), through the form's ``data-confirm``;
- ``POST /spool/flush``: retry all (``spool retry --all``): every waiting message of the
  chosen relay and state made due now, failed ones put back to incoming
  (``dispatch.control.commands.spool_flush``, the CLI's own code, handed over by the
  composition root as ``sources.flush``: the dashboard does not import the control room).

Retry means: a failed message goes back to ``incoming/`` with its attempts reset
(``Spool.retry_failed``); a waiting one becomes due now with its attempts kept
(``Spool.make_due``). Delete removes an incoming or failed message for good; one being
delivered cannot be touched. Every action is audit-logged (``dispatch/storage/audit.py``)
with the admin and their address as the actor, and its result is shown after the redirect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlencode

from quart import Blueprint, Response, request

from dispatch.dashboard import formats
from dispatch.dashboard.notices import Notice, Notices, actor
from dispatch.dashboard.render import redirect_to, render_page
from dispatch.dashboard.sources import DashboardSources
from dispatch.dashboard.spool_listing import VIEW_LABELS, VIEWS, age, list_spool
from dispatch.delivery.routing import Router
from dispatch.spool import MessageState, Spool, SpoolError, UnknownMessageError, is_valid_id
from dispatch.storage import audit

ACTIONS: Final = ("retry", "delete")
FLUSH_STATES: Final = ("incoming", "failed")
MAX_BULK: Final = 1000  # ids in one bulk action: a page is 100; ten pages' worth at most


class ActionRefused(Exception):
    """An action that cannot be done to a message as it is now (being delivered)."""


async def retry_one(spool: Spool, message_id: str) -> str:
    """Retry one message; return what happened (for the notice). Raises ``SpoolError``."""
    entry = spool.get(message_id)
    if entry.state is MessageState.FAILED:
        await spool.retry_failed(message_id)
        return "back to incoming, due now"
    if entry.state is MessageState.INCOMING:
        if spool.make_due(message_id):
            return "due now"
        return "already due"
    raise ActionRefused(f"{message_id} is being delivered right now")


def _audit_retry(sources: DashboardSources, message_id: str, result: str, who: str) -> None:
    if result == "back to incoming, due now":
        sources.audit(audit.spool_retried(message_id, actor=who))
    elif result == "due now":
        sources.audit(audit.spool_made_due(message_id, actor=who))


async def delete_one(spool: Spool, message_id: str) -> str:
    """Delete one message; return the state it was deleted from. Raises ``SpoolError``."""
    entry = spool.get(message_id)
    if entry.state is MessageState.PROCESSING:
        raise ActionRefused(f"{message_id} is being delivered right now; try again in a moment")
    await spool.delete(message_id)
    return entry.state.value


async def act(sources: DashboardSources, action: str, ids: list[str]) -> Notice:
    """Apply ``action`` to ``ids``, audit each change, and say what happened."""
    who = actor()
    done: list[str] = []
    problems: list[str] = []
    for message_id in ids:
        try:
            if not is_valid_id(message_id):
                raise UnknownMessageError(message_id)
            if action == "retry":
                result = await retry_one(sources.spool, message_id)
                _audit_retry(sources, message_id, result, who)
                done.append(f"{message_id}: {result}")
            else:
                state = await delete_one(sources.spool, message_id)
                sources.audit(audit.spool_deleted(message_id, state, actor=who))
                done.append(f"{message_id}: deleted from {state}")
        except UnknownMessageError:
            problems.append(f"{message_id}: no longer in the spool (delivered or deleted)")
        except (SpoolError, ActionRefused) as exc:
            problems.append(f"{message_id}: {exc}")
    verb = "Retried" if action == "retry" else "Deleted"
    plural = "" if len(done) == 1 else "s"
    title = f"{verb} {len(done)} message{plural}"
    if problems:
        title += f"; {len(problems)} could not be"
    return Notice(title, "warn" if problems else "ok", tuple(problems + done)[:50])


def register(bp: Blueprint, sources: DashboardSources) -> None:
    notices = Notices()

    def router() -> Router:
        current = sources.settings.current
        return Router(current.routes, current.default_relay)

    @bp.get("/spool")
    async def spool() -> Response:
        args = request.args
        view = args.get("state", "all")
        view = view if view in VIEWS else "all"
        query, relay = args.get("q", "").strip()[:500], args.get("relay", "").strip()[:200]
        page = int(args["page"]) if args.get("page", "").isdigit() else 1
        listing = await list_spool(
            sources.spool,
            sources.store.database,
            router(),
            view=view,
            query=query,
            relay=relay,
            page=page,
        )
        return await render_page(
            "dashboard/spool.html",
            title="Spool",
            active="spool",
            listing=listing,
            view=view,
            views=VIEWS,
            view_labels=VIEW_LABELS,
            query=query,
            relay=relay,
            relay_names=[r.name for r in sources.settings.current.relays],
            notice=notices.take(),
            flush_available=sources.flush is not None,
            here=this_list(),
            age=age,
            fmt=formats,
        )

    def back(notice: Notice, target: str) -> Response:
        """Redirect to the list the form was on (``back``: a path of this page only)."""
        if not target.startswith("/spool") or "\\" in target or not target.isprintable():
            target = "/spool"
        separator = "&" if "?" in target else "?"
        return redirect_to(f"{target}{separator}notice={notices.keep(notice)}")

    @bp.post("/spool/act")
    async def spool_act() -> Response:
        form = await request.form
        one = form.get("one", "")
        if one:
            action, _, message_id = one.partition(":")
            ids = [message_id]
        else:
            action, ids = form.get("action", ""), form.getlist("ids")[:MAX_BULK]
        if action not in ACTIONS:
            notice = Notice(f"Unknown action {action[:40]!r}: use retry or delete.", "bad")
        elif not ids:
            notice = Notice("No message was selected: tick the messages first.", "warn")
        else:
            notice = await act(sources, action, ids)
        return back(notice, form.get("back", ""))

    @bp.post("/spool/flush")
    async def spool_flush_all() -> Response:
        form = await request.form
        relay = form.get("relay") or None
        state = form.get("state") or None
        names = [r.name for r in sources.settings.current.relays]
        if sources.flush is None:
            notice = Notice("Retry all is not available in this process.", "bad")
        elif relay is not None and relay not in names:
            notice = Notice(
                f"Relay {relay[:100]!r} is not configured; configured: {', '.join(names)}.", "bad"
            )
        elif state is not None and state not in FLUSH_STATES:
            notice = Notice(f"{state[:40]!r} cannot be retried: choose waiting or failed.", "bad")
        else:
            who = actor()
            result = await sources.flush(relay, state, who)
            sources.audit(audit.spool_flushed(result["made_due"], relay, state, actor=who))
            notice = flush_notice(result)
        return back(notice, form.get("back", ""))


def this_list() -> str:
    """This list's path and query without its ``notice`` (where actions send the browser)."""
    query = [(k, v) for k, v in request.args.items(multi=True) if k != "notice"]
    return "/spool" + (f"?{urlencode(query)}" if query else "")


def flush_notice(result: Mapping[str, Any]) -> Notice:
    made = result["made_due"]
    details = (
        f"{result['incoming']} waiting made due now",
        f"{result['failed']} failed put back to incoming",
        f"{result['already_due']} due already",
        f"{result['busy']} busy (being delivered or changed meanwhile)",
    )
    return Notice(
        f"Retry all: {made} message{'' if made == 1 else 's'} made due now", "ok", details
    )
