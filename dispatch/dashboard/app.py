"""The dashboard on the app of the dashboard port: :func:`register_dashboard`.

The dashboard port's app is the ops app (``dispatch/web/ops.py``: the allow-list,
``/health``, ``/metrics``), built by the "webui" component
(``dispatch/web/ops_servers.py``, ``OpsServers.run_dashboard``), which calls the function the
composition root handed it — ``partial(register_dashboard, sources=...)`` — on each app it
builds. So the pages are served by the same Hypercorn server on ``webui.port`` (HTTPS), and
the monitoring server, built from the same ops app, has no dashboard.

Owns no task: every route runs in the request's task; the sessions are in the database.
"""

from __future__ import annotations

from typing import Final

from quart import Blueprint
from quart_trio import QuartTrio

from dispatch.dashboard import login
from dispatch.dashboard.auth import Sessions
from dispatch.dashboard.gate import AdminState, install_gate
from dispatch.dashboard.pages import PAGES
from dispatch.dashboard.sources import DashboardSources

BLUEPRINT: Final = "dashboard"


def register_dashboard(app: QuartTrio, sources: DashboardSources) -> None:
    """Add the dashboard (gate, login, every page, static files) to ``app``."""
    sessions = Sessions(sources.store.admin)
    state = AdminState(sources.store.admin)
    install_gate(app, sessions, state)
    bp = Blueprint(
        BLUEPRINT,
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    login.register(bp, sources, sessions, state)
    for register in PAGES:
        register(bp, sources)
    app.register_blueprint(bp)
