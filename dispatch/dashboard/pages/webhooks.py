"""The Webhooks page: the configured receivers, the calls owed, and the recent calls.

``GET /webhooks`` reads the sender's :class:`~dispatch.monitoring.webhook_activity.
WebhookActivity` (in memory: the calls since the daemon started, newest first, at most
:data:`~dispatch.monitoring.webhook_activity.RECENT_CALLS`) and the ``[[webhooks]]`` of the
running configuration, as ``dispatch webhooks recent`` and ``/debug/webhooks`` do. Receivers
are configured in the file and applied with a reload (Settings page); docs/webhooks.md.
"""

from __future__ import annotations

from quart import Blueprint, Response

from dispatch.config.render import redact_url_credentials
from dispatch.dashboard import formats
from dispatch.dashboard.render import render_page
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    @bp.get("/webhooks")
    async def webhooks() -> Response:
        activity = sources.stats.webhook_activity
        return await render_page(
            "dashboard/webhooks.html",
            title="Webhooks",
            active="webhooks",
            fmt=formats,
            hooks=[(redact_url_credentials(h.url), h) for h in sources.settings.current.webhooks],
            owed=activity.outbox_depth,
            oldest=activity.oldest_pending_at,
            calls=activity.recent(),
            config_path=sources.settings.path,
        )
