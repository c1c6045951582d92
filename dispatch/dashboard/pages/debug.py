"""The ``/debug/`` pages (SPEC §10) on the dashboard port, behind the admin login.

They are the monitoring server's own pages (:func:`dispatch.web.debug.register_debug`), added
to the dashboard port's app when the dashboard's blueprint is registered, with the index at
``/debug`` and ``/debug/`` only (``/`` is the Overview here). The gate
(:mod:`dispatch.dashboard.gate`) already asks for the admin's session on every path but the
ops ones, so nothing is added for the login.

Those pages are plain HTML with their own inline ``<style>`` and no script. The dashboard's
policy allows neither, so their answers get a policy of their own (:data:`DEBUG_POLICY`):
inline styles yes, script and everything else no, framed by nobody.
"""

from __future__ import annotations

from typing import Final, cast

from quart import Blueprint, Response, request
from quart.blueprints import BlueprintSetupState
from quart_trio import QuartTrio

from dispatch.dashboard.render import redirect_to
from dispatch.dashboard.sources import DashboardSources
from dispatch.web.debug import register_debug

DEBUG_PREFIX: Final = "/debug"
DEBUG_POLICY: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def register(bp: Blueprint, sources: DashboardSources) -> None:
    debug = sources.debug
    if debug is None:
        return  # a dashboard built without the debug sources (tests of single pages)

    def add_to_app(state: BlueprintSetupState) -> None:
        app = cast(QuartTrio, state.app)
        register_debug(app, debug, index_paths=(DEBUG_PREFIX, DEBUG_PREFIX + "/"))

        @app.after_request
        async def debug_policy(response: Response) -> Response:
            if request.path == DEBUG_PREFIX or request.path.startswith(DEBUG_PREFIX + "/"):
                response.headers.setdefault("Content-Security-Policy", DEBUG_POLICY)
            return response

    bp.record_once(add_to_app)

    @bp.get("/favicon.ico")
    async def favicon() -> Response:
        """The debug pages name no icon, so the browser asks for this one; the dashboard's."""
        return redirect_to("/static/favicon.svg", status=301)
