"""The relays page. Placeholder until its page is built: it says what will be here."""

from __future__ import annotations

from quart import Blueprint

from dispatch.dashboard.pages.placeholder import register_placeholder
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    register_placeholder(
        bp,
        "relays",
        (
            "Each relay's state, last success and last error, a test message with the "
            "upstream's reply, and a live log of its attempts."
        ),
    )
