"""The overview page. Placeholder until its page is built: it says what will be here."""

from __future__ import annotations

from quart import Blueprint

from dispatch.dashboard.pages.placeholder import register_placeholder
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    register_placeholder(
        bp,
        "overview",
        (
            "Counters for today and the last 5 minutes (received, delivered, failed, retried,"
            " denied), the spool's state, each relay's state, the health summary, and charts "
            "of throughput and queue depth over 24 hours, updated live."
        ),
    )
