"""The dashboard's navigation: every page, in the order of the menu.

Each entry's ``key`` is also the endpoint name of the page's view function (registered as
``dashboard.<key>`` on the blueprint) and the ``active`` value its template is rendered with,
so the menu marks the current page (``aria-current="page"``). A page module registers the
route at ``path`` (see ``dispatch/dashboard/pages/__init__.py``).
"""

from __future__ import annotations

from typing import Final

import attrs


@attrs.frozen
class NavEntry:
    key: str  # the view function's name and the page's ``active`` value
    label: str
    path: str


NAV: Final[tuple[NavEntry, ...]] = (
    NavEntry("overview", "Overview", "/"),
    NavEntry("messages", "Message log", "/messages"),
    NavEntry("spool", "Spool", "/spool"),
    NavEntry("inbox", "Local inbox", "/inbox"),
    NavEntry("relays", "Relays", "/relays"),
    NavEntry("routing", "Routing", "/routing"),
    NavEntry("api_keys", "API keys", "/api-keys"),
    NavEntry("audit", "Audit log", "/audit"),
    NavEntry("webhooks", "Webhooks", "/webhooks"),
    NavEntry("settings", "Settings", "/settings"),
    NavEntry("debug", "Debug", "/debug/"),
)


def entry(key: str) -> NavEntry:
    """The navigation entry of ``key``; KeyError names the known keys."""
    for candidate in NAV:
        if candidate.key == key:
            return candidate
    raise KeyError(f"no dashboard page {key!r}; pages: {', '.join(e.key for e in NAV)}")
