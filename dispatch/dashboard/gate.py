"""The dashboard's gate: login, CSRF and security headers on every path of the port.

:func:`install_gate` adds to the app of the dashboard port (the ops app of
``dispatch/web/ops.py``, whose allow-list of ``webui.allowed_cidrs`` runs first):

- a ``before_request`` hook. The ops paths (:data:`OPS_PATHS`: ``/health…`` and
  ``/metrics``) pass untouched, without login, exactly as before the dashboard existed.
  Every other path — every page, including ones added later and unknown ones — needs the
  admin's session: without an admin password every page leads to ``/setup``; without a
  session, to ``/login?next=…`` (a ``GET``) or ``403`` (anything else). ``/static/…``,
  ``/login`` and ``/setup`` are open. A state-changing request (not ``GET``/``HEAD``/
  ``OPTIONS``) needs the session's CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``) and, when the browser names an ``Origin`` (not ``null``), this host:
  else ``403``. The pre-session forms (login, setup) check their own token
  (:mod:`dispatch.dashboard.login`).
- an ``after_request`` hook: the security headers (:func:`security_headers`) on every
  dashboard answer, redirects and errors included; ``Cache-Control: no-store`` on all but
  the static files. A page that needs another policy (the Local inbox's sandboxed frame) sets
  its own ``Content-Security-Policy`` on its response; the hook never overwrites one.

Reaches the database once per request (the session), in a worker thread; while the database
is down the pages answer ``503`` (and ``/health`` says why).
"""

from __future__ import annotations

import logging
import secrets
from typing import Final
from urllib.parse import quote, urlsplit

from quart import Response, g, request
from quart_trio import QuartTrio

from dispatch.dashboard.auth import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, Sessions, same_token
from dispatch.dashboard.render import redirect_to
from dispatch.storage.admin import AdminStore

log = logging.getLogger("dispatch.dashboard")

OPS_PATHS: Final = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})
OPEN_PATHS: Final = frozenset({"/login", "/setup"})
STATIC_PREFIX: Final = "/static/"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


LIVE_HEADER: Final = "X-Dispatch-Live"
"""Sent by our scripts' own polls (live.js, the Overview's charts); EventSource sends
``Accept: text/event-stream`` instead. Neither is the operator's doing."""


def is_background(live: str | None, accept: str | None) -> bool:
    """Whether a request is a page's own live update rather than the operator's, from its
    :data:`LIVE_HEADER` and ``Accept`` headers."""
    return live == "1" or "text/event-stream" in (accept or "")


def content_security_policy(nonce: str) -> str:
    """The pages' policy: only this origin; inline script only with this request's nonce;
    no plugins, no ``<base>``, forms post here only, and no page may frame the dashboard."""
    return (
        "default-src 'self'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        "style-src 'self'; "
        "img-src 'self' data:; "
        "object-src 'none'; "
        "base-uri 'none'; "
        "form-action 'self'; "
        "frame-ancestors 'none'"
    )


def security_headers(response: Response, *, nonce: str, cacheable: bool) -> None:
    """Set the dashboard's security headers on ``response`` unless it set its own."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", content_security_policy(nonce))
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if cacheable:
        # Quart would let browsers keep static files 12 h unasked: after an upgrade they
        # would show new pages with the old stylesheet. Revalidating costs a 304.
        headers["Cache-Control"] = "no-cache"
    else:
        headers.setdefault("Cache-Control", "no-store")


def error_page(status: int, title: str, detail: str) -> Response:
    """A minimal HTML error answer (no layout: it must work without a session or database)."""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title>"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/dashboard.css"></head>'
        f'<body><main id="main" class="narrow"><h1>{title}</h1><p>{detail}</p>'
        '<p><a href="/">Back to the dashboard</a></p></main></body></html>'
    )
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def forbidden(detail: str) -> Response:
    return error_page(403, "Forbidden", detail)


def same_origin() -> bool:
    """Whether the request's ``Origin`` (when sent) is this host over HTTPS."""
    origin = request.headers.get("Origin")
    # Not every client sends it, and under Referrer-Policy: no-referrer a browser's form
    # posts say "null": the CSRF token is the check then.
    if origin is None or origin == "null":
        return True
    parts = urlsplit(origin)
    return parts.scheme == "https" and parts.netloc == request.headers.get("Host", "")


class AdminState:
    """Whether the admin password is set. Once seen set it stays set (nothing unsets it), so
    the database is asked only until then."""

    def __init__(self, admin: AdminStore) -> None:
        self._admin = admin
        self._set = False

    async def password_set(self) -> bool:
        if not self._set:
            self._set = await self._admin.password_hash() is not None
        return self._set

    def mark_set(self) -> None:
        self._set = True


def install_gate(app: QuartTrio, sessions: Sessions, state: AdminState) -> None:
    """Add the gate's hooks to ``app`` (see the module docstring)."""
    unavailable = AdminStore.unavailable_errors

    @app.before_request
    async def gate() -> Response | None:
        path = request.path
        if path in OPS_PATHS:
            return None
        g.csp_nonce = secrets.token_urlsafe(16)
        if path.startswith(STATIC_PREFIX):
            return None
        try:
            if not await state.password_set():
                return None if path == "/setup" else redirect_to("/setup")
            session = await sessions.find(
                request.cookies.get(SESSION_COOKIE),
                extend=not is_background(
                    request.headers.get(LIVE_HEADER), request.headers.get("Accept")
                ),
            )
            if path in OPEN_PATHS:
                g.session = session  # the login page sends a signed-in browser on
                return None
        except unavailable as exc:
            log.warning("dashboard %s %s: database unavailable: %s", request.method, path, exc)
            return error_page(
                503,
                "Database unavailable",
                "The dashboard cannot check your session while the database is unavailable; "
                "see /health for the reason.",
            )
        if session is None:
            if request.method in SAFE_METHODS:
                return redirect_to("/login?next=" + quote(request.full_path.rstrip("?"), safe="/"))
            return forbidden("Your session has ended or is missing: log in again.")
        g.session = session
        if request.method not in SAFE_METHODS:
            return await _check_csrf(session.csrf_token)
        return None

    @app.after_request
    async def headers(response: Response) -> Response:
        nonce = g.get("csp_nonce")
        if nonce is not None:
            security_headers(
                response, nonce=nonce, cacheable=request.path.startswith(STATIC_PREFIX)
            )
        return response


async def _check_csrf(expected: str) -> Response | None:
    if not same_origin():
        log.warning(
            "dashboard %s %s from %s: Origin %s is not this host; refused",
            request.method,
            request.path,
            request.remote_addr,
            request.headers.get("Origin", "")[:100],
        )
        return forbidden("The request came from another site.")
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        given = (await request.form).get(CSRF_FIELD)
    if not same_token(given, expected):
        log.warning(
            "dashboard %s %s from %s: missing or wrong CSRF token; refused",
            request.method,
            request.path,
            request.remote_addr,
        )
        return forbidden(
            "The form's security token is missing or out of date: reload the page and try again."
        )
    return None
