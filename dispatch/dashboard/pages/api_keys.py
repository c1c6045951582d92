"""The api keys page. Placeholder until its page is built: it says what will be here."""

from __future__ import annotations

from quart import Blueprint

from dispatch.dashboard.pages.placeholder import register_placeholder
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    register_placeholder(
        bp,
        "api_keys",
        (
            "API keys: create one (shown once, with a copy button), the list with prefix, "
            "name, created and last used, and revoke."
        ),
    )
