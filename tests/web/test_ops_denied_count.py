"""Regression: refusals on the dashboard port are counted, like those on SMTP and the API.

Found by tests/system/test_abuse_allowlist.py: a peer outside ``webui.allowed_cidrs`` got its
``403`` and a log line, but no metric counted it.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from tests.system.faults import metric
from tests.web.test_health import dashboard


async def test_refused_dashboard_requests_are_counted(tmp_path: Path) -> None:
    async with dashboard(tmp_path, webui={"allowed_cidrs": ["127.0.0.2/32"]}) as (
        dispatch,
        client,
    ):
        assert (await client.get("/health")).status_code == 403
        assert (await client.get("/metrics")).status_code == 403
        live = dispatch.parts.settings
        live.current = attrs.evolve(
            live.current, webui=attrs.evolve(live.current.webui, allowed_cidrs=())
        )
        text = (await client.get("/metrics")).text
    assert dispatch.parts.stats.webui_denied["allowlist"] == 2
    assert metric(text, "dispatch_webui_denied_requests_total", reason="allowlist") == 2
