"""The spool page. Placeholder until its page is built: it says what will be here."""

from __future__ import annotations

from quart import Blueprint

from dispatch.dashboard.pages.placeholder import register_placeholder
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    register_placeholder(
        bp,
        "spool",
        (
            "The spool: incoming, retrying and failed messages with their reason and next "
            "attempt; retry, delete and retry all, with confirmation."
        ),
    )
