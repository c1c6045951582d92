"""The dashboard's pages, one module each; :data:`PAGES` lists them in menu order.

A page module has one function, ``register(bp, sources)``, that adds its routes to the
dashboard's blueprint ``bp`` (a :class:`quart.Blueprint` named ``"dashboard"``) and reads what
it shows from ``sources`` (:class:`~dispatch.dashboard.sources.DashboardSources`). Its main
view's function is named like its key in ``dispatch/dashboard/nav.py`` (the endpoint
``dashboard.<key>``) and is rendered with :func:`dispatch.dashboard.render.render_page`
(``active=<key>``). Every route is behind the login and CSRF gate
(:mod:`dispatch.dashboard.gate`) without anything to add. Templates live in
``dispatch/dashboard/templates/dashboard/<page>.html`` and extend ``dashboard/base.html``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from quart import Blueprint

from dispatch.dashboard.pages import (
    api_keys,
    audit_log,
    debug,
    inbox,
    messages,
    overview,
    relays,
    routing,
    settings,
    spool,
    webhooks,
)
from dispatch.dashboard.sources import DashboardSources

PAGES: Final[tuple[Callable[[Blueprint, DashboardSources], None], ...]] = (
    overview.register,
    messages.register,
    spool.register,
    inbox.register,
    relays.register,
    routing.register,
    api_keys.register,
    audit_log.register,
    webhooks.register,
    settings.register,
    debug.register,
)
