"""A page not built yet: says plainly what will be there. Replaced page by page."""

from __future__ import annotations

from quart import Blueprint, Response

from dispatch.dashboard.nav import entry
from dispatch.dashboard.render import render_page


def register_placeholder(bp: Blueprint, key: str, will_show: str) -> None:
    """Register the page ``key`` of the menu (``dispatch/dashboard/nav.py``) as a placeholder
    saying what it ``will_show``."""
    page = entry(key)

    async def view() -> Response:
        return await render_page(
            "dashboard/placeholder.html", title=page.label, active=key, will_show=will_show
        )

    bp.add_url_rule(page.path, key, view, methods=["GET"])
