"""The inbox page. Placeholder until its page is built: it says what will be here."""

from __future__ import annotations

from quart import Blueprint

from dispatch.dashboard.pages.placeholder import register_placeholder
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    register_placeholder(
        bp,
        "inbox",
        (
            "The Local inbox: captured mail with search, each message rendered in a sandboxed"
            " frame, its text part, headers, raw source and attachments; delete and release "
            "through a relay."
        ),
    )
