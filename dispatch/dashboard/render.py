"""Rendering a dashboard page: :func:`render_page` fills the base layout's context.

Every page template extends ``dashboard/base.html`` and fills its blocks (``content``, and
optionally ``head``, ``heading``, ``scripts``). :func:`render_page` adds what the layout
needs: the menu (``nav``) with the current page (``active``), the session's CSRF token
(``csrf_token``, for forms and the ``<meta name="csrf-token">`` scripts read), the
request's script nonce (``csp_nonce``), the version and host name. Jinja2 escapes every
value (autoescape is on for ``.html``): never mark peer-supplied text ``|safe``.
"""

from __future__ import annotations

import socket
from typing import Any

from quart import Response, g, render_template

from dispatch import __version__
from dispatch.dashboard.auth import Session
from dispatch.dashboard.nav import NAV

_HOST = socket.gethostname()


def csrf_token() -> str:
    """The current session's CSRF token ("" before login: pre-session forms carry their own)."""
    session: Session | None = g.get("session")
    return session.csrf_token if session is not None else g.get("form_token", "")


def csp_nonce() -> str:
    """This request's script nonce: ``<script nonce="{{ csp_nonce }}">`` may run inline."""
    return str(g.get("csp_nonce", ""))


def redirect_to(location: str, status: int = 303) -> Response:
    """A redirect to a path of this site (303: the browser follows with ``GET``)."""
    response = Response("", status=status, content_type="text/plain; charset=utf-8")
    response.headers["Location"] = location
    return response


async def render_page(
    template: str,
    *,
    title: str,
    active: str | None = None,
    status: int = 200,
    **context: Any,
) -> Response:
    """``template`` (under ``templates/``, e.g. ``"dashboard/spool.html"``) in the layout.

    ``title`` is the ``<title>`` and the page's ``<h1>``; ``active`` the menu key
    (``dispatch/dashboard/nav.py``) of the page; ``status`` the HTTP status.
    """
    body = await render_template(
        template,
        title=title,
        active=active,
        nav=NAV,
        signed_in=g.get("session") is not None,
        csrf_token=csrf_token(),
        csp_nonce=csp_nonce(),
        version=__version__,
        hostname=_HOST,
        **context,
    )
    return Response(body, status=status, content_type="text/html; charset=utf-8")
