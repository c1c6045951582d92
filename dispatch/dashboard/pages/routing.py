"""The routing page. Placeholder until its page is built: it says what will be here."""

from __future__ import annotations

from quart import Blueprint

from dispatch.dashboard.pages.placeholder import register_placeholder
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    register_placeholder(
        bp,
        "routing",
        ("The routing rules in order, and a form that simulates where a message would go."),
    )
