"""The messages page. Placeholder until its page is built: it says what will be here."""

from __future__ import annotations

from quart import Blueprint

from dispatch.dashboard.pages.placeholder import register_placeholder
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    register_placeholder(
        bp,
        "messages",
        (
            "The message log: search by address, subject, status, tag, date range, relay, "
            "source and API key, with a detail page showing each message's whole timeline, "
            "envelope, headers and raw source."
        ),
    )
