"""The settings page. Placeholder until its page is built: it says what will be here."""

from __future__ import annotations

from quart import Blueprint

from dispatch.dashboard.pages.placeholder import register_placeholder
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    register_placeholder(
        bp,
        "settings",
        (
            "The effective configuration with secrets redacted, which file and key to change,"
            " reload, the TLS certificate in use, and storage usage with purge now."
        ),
    )
