"""First run, login and logout (SPEC §8): ``/setup``, ``/login``, ``/logout``.

- ``/setup`` (first run only): sets the admin password (at least 12 characters, typed twice;
  argon2id via ``dispatch/security/passwords.py``) and signs the browser in. Two browsers
  racing to set it cannot both win (``AdminStore.set_password_hash(only_if_unset=True)``);
  once a password is set the page leads to ``/login``. ``dispatch set-admin-password`` sets
  or changes it from the command line.
- ``/login``: checks the password in a worker thread under the process-wide limit of
  password checks. Wrong passwords are throttled per address (:mod:`dispatch.security.
  throttle`: :data:`~dispatch.dashboard.sources.LOGIN_FAILURES` per
  :data:`~dispatch.dashboard.sources.LOGIN_WINDOW_SECONDS`): a throttled address gets ``429``
  with ``Retry-After``, whatever it sends, until the window lets it try again.
- ``/logout`` (``POST`` with the session's CSRF token, checked by the gate): ends the session.

Both forms before a session carry the double-submit token of
:data:`~dispatch.dashboard.auth.FORM_COOKIE`. Each success, wrong password, throttling,
logout and password setting is written to the audit log (``dispatch/storage/audit.py``).
"""

from __future__ import annotations

import logging
import math
from typing import Final

import trio
from quart import Blueprint, Response, g, request
from werkzeug.datastructures import MultiDict

from dispatch.dashboard.auth import (
    CSRF_FIELD,
    FORM_COOKIE,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    SESSION_COOKIE,
    Sessions,
    new_token,
    password_problem,
    same_token,
)
from dispatch.dashboard.gate import AdminState, forbidden
from dispatch.dashboard.render import redirect_to, render_page
from dispatch.dashboard.sources import DashboardSources
from dispatch.security.passwords import hash_password, verify_password
from dispatch.storage import audit

log = logging.getLogger("dispatch.dashboard")

PASSWORD_FIELD: Final = "password"  # noqa: S105 (a form field's name)
AGAIN_FIELD: Final = "again"
NEXT_FIELD: Final = "next"


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site only (never ``//host`` or a URL)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def set_cookie(response: Response, name: str, value: str) -> None:
    """A ``__Host-`` cookie: HttpOnly, Secure, SameSite=Strict, Path=/, for this session of
    the browser (no Max-Age: the server decides when a session ends)."""
    response.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="Strict")


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="Strict")


def _peer() -> str:
    return request.remote_addr or "unknown peer"


class LoginViews:
    """The views of this module; holds the objects they share (none of their own state)."""

    def __init__(self, sources: DashboardSources, sessions: Sessions, state: AdminState) -> None:
        self.sources = sources
        self.sessions = sessions
        self.state = state

    async def form_page(
        self, template: str, *, title: str, status: int = 200, **context: str
    ) -> Response:
        """A pre-session form, with its double-submit token (the browser's, or a new one)."""
        token = request.cookies.get(FORM_COOKIE) or new_token()
        g.form_token = token
        response = await render_page(
            template,
            title=title,
            status=status,
            min_length=MIN_PASSWORD_LENGTH,
            max_length=MAX_PASSWORD_LENGTH,
            **context,
        )
        set_cookie(response, FORM_COOKIE, token)
        return response

    async def signed_in(self, target: str) -> Response:
        """Begin a session for this browser and send it to ``target``."""
        token, _ = await self.sessions.begin()
        response = redirect_to(safe_next(target))
        set_cookie(response, SESSION_COOKIE, token)
        clear_cookie(response, FORM_COOKIE)
        self.sources.audit(audit.dashboard_login(_peer()))
        log.info("dashboard: admin signed in from %s", _peer())
        return response

    async def setup(self) -> Response:
        if await self.state.password_set():
            return redirect_to("/login")
        title = "Set the admin password"
        if request.method != "POST":
            return await self.form_page("dashboard/setup.html", title=title)
        form = await request.form
        if not _form_token_ok(form):
            return forbidden("The form's security token is missing or out of date: reload it.")
        password = form.get(PASSWORD_FIELD, "")
        problem = password_problem(password, form.get(AGAIN_FIELD, ""))
        if problem is not None:
            return await self.form_page(
                "dashboard/setup.html", title=title, error=problem, status=400
            )
        hashed = await trio.to_thread.run_sync(hash_password, password)
        if not await self.sources.store.admin.set_password_hash(hashed, only_if_unset=True):
            return redirect_to("/login")  # another browser was first
        self.state.mark_set()
        self.sources.audit(audit.admin_password_set(first_time=True, actor=_peer()))
        log.info("dashboard: admin password set (first run) from %s", _peer())
        return await self.signed_in("/")

    async def login(self) -> Response:
        title = "Log in"
        target = safe_next(request.args.get(NEXT_FIELD))
        if request.method != "POST":
            if g.get("session") is not None:
                return redirect_to(target)
            return await self.form_page("dashboard/login.html", title=title, next=target)
        form = await request.form
        target = safe_next(form.get(NEXT_FIELD))
        if not _form_token_ok(form):
            return forbidden("The form's security token is missing or out of date: reload it.")
        peer, throttle = _peer(), self.sources.logins
        if (wait := throttle.retry_after(peer)) > 0:
            return await self.throttled(peer, wait, target)
        password = form.get(PASSWORD_FIELD, "")[:MAX_PASSWORD_LENGTH]
        password_hash = await self.sources.store.admin.password_hash()
        ok = False
        throttle.begin_attempt(peer)
        try:
            ok = await verify_password(password_hash, password)
        finally:
            throttle.end_attempt(peer, success=ok)
        if ok:
            return await self.signed_in(target)
        log.warning("dashboard: wrong admin password from %s", peer)
        self.sources.audit(audit.dashboard_login_failed(peer))
        if (wait := throttle.retry_after(peer)) > 0:
            return await self.throttled(peer, wait, target)
        return await self.form_page(
            "dashboard/login.html", title=title, next=target, error="Wrong password.", status=401
        )

    async def throttled(self, peer: str, wait: float, target: str) -> Response:
        throttle = self.sources.logins
        if throttle.newly_throttled(peer):
            log.warning(
                "dashboard: %s throttled after %d wrong passwords", peer, throttle.max_failures
            )
            self.sources.audit(
                audit.dashboard_login_throttled(peer, throttle.max_failures, throttle.window, wait)
            )
        seconds = math.ceil(wait)
        response = await self.form_page(
            "dashboard/login.html",
            title="Log in",
            next=target,
            error=(
                f"Too many wrong passwords from your address ({peer}): try again in "
                f"{seconds} seconds."
            ),
            status=429,
        )
        response.headers["Retry-After"] = str(seconds)
        return response

    async def logout(self) -> Response:
        await self.sessions.end(request.cookies.get(SESSION_COOKIE))
        self.sources.audit(audit.dashboard_logout(_peer()))
        log.info("dashboard: admin signed out from %s", _peer())
        response = redirect_to("/login")
        clear_cookie(response, SESSION_COOKIE)
        return response


def _form_token_ok(form: MultiDict[str, str]) -> bool:
    return same_token(form.get(CSRF_FIELD), request.cookies.get(FORM_COOKIE))


def register(
    bp: Blueprint, sources: DashboardSources, sessions: Sessions, state: AdminState
) -> None:
    """Add ``/setup``, ``/login`` and ``/logout`` to the dashboard's blueprint."""
    views = LoginViews(sources, sessions, state)
    bp.add_url_rule("/setup", "setup", views.setup, methods=["GET", "POST"])
    bp.add_url_rule("/login", "login", views.login, methods=["GET", "POST"])
    bp.add_url_rule("/logout", "logout", views.logout, methods=["POST"])
